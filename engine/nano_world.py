"""What MusicGen-nano's world contains: the genres, moods, modes, keys and chord progressions of its corpus.

`training.corpus` draws pieces from these; `engine.exact` reads clips back against them (a caption's genre is
checkable because a genre fixes its instruments, drum kits and tempi); the app can say what nano knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
DORIAN = (0, 2, 3, 5, 7, 9, 10)
MODES = {"major": MAJOR, "minor": MINOR, "dorian": DORIAN}
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# progressions as (scale degree 0-based, quality) per bar; qualities adapted to the mode below
PROGRESSIONS = {
    "pop": [(0, None), (4, None), (5, None), (3, None)],
    "rock": [(0, None), (3, None), (4, None), (3, None)],
    "blues": [(0, "7"), (3, "7"), (0, "7"), (4, "7")],
    "jazz": [(1, "min7"), (4, "7"), (0, "maj7"), (5, "min7")],
    "modal": [(0, None), (6, None), (0, None), (6, None)],
    "sad": [(0, None), (5, None), (2, None), (6, None)],
    "drone": [(0, "sus2"), (0, "sus2"), (3, "sus2"), (0, "sus2")],
    "classical": [(0, None), (3, None), (4, "7"), (0, None)],
}


@dataclass(frozen=True)
class Genre:
    name: str
    tempos: tuple[int, ...]  # 16th-note lengths in frames (see TEMPOS)
    modes: tuple[str, ...]
    progressions: tuple[str, ...]
    lead: tuple[str, ...]
    bass: tuple[str, ...]
    harmony: tuple[str, ...]
    kits: tuple[str, ...]  # drum kits to pick from; "" (or none at all) means no drums
    groove: dict  # voice -> 16-step pattern strings ("x" hit, "." rest)
    bass_style: str  # root, octave, walking, fifths, sustained
    chord_rhythm: str  # bar, half, offbeat, stabs
    melody_density: float  # note onsets per 16th step
    words: tuple[str, ...] = field(default=())  # how captions may name the genre


G = lambda **kw: Genre(**kw)  # noqa: E731
GENRES = {g.name: g for g in [
    G(name="rock", tempos=(4, 3), modes=("major", "minor"), progressions=("rock", "pop"), lead=("guitar", "saw lead"),
      bass=("electric bass",), harmony=("guitar", "organ"), kits=("acoustic",), bass_style="root", chord_rhythm="half",
      groove={"kick": "x.......x.x.....", "snare": "....x.......x...", "closed hat": "x.x.x.x.x.x.x.x."},
      melody_density=0.35, words=("rock", "rock song", "rock track", "guitar rock")),
    G(name="jazz", tempos=(3, 5), modes=("dorian", "major"), progressions=("jazz", "blues"), lead=("piano", "flute"),
      bass=("upright bass",), harmony=("piano",), kits=("acoustic",), bass_style="walking", chord_rhythm="stabs",
      groove={"closed hat": "x..x.x..x..x.x..", "rim": "....x.......x...", "kick": "x..............."},
      melody_density=0.45, words=("jazz", "jazz tune", "jazz trio", "swinging jazz")),
    G(name="techno", tempos=(4,), modes=("minor",), progressions=("modal", "drone"), lead=("saw lead", "square lead"),
      bass=("synth bass",), harmony=("pad",), kits=("electronic",), bass_style="offbeat", chord_rhythm="bar",
      groove={"kick": "x...x...x...x...", "open hat": "..x...x...x...x.", "clap": "....x.......x..."},
      melody_density=0.25, words=("techno", "techno track", "driving techno", "electronic dance music")),
    G(name="ambient", tempos=(8, 7), modes=("major", "dorian"), progressions=("drone", "modal"),
      lead=("bells", "flute"), bass=("sub bass",), harmony=("pad", "strings"), kits=(), bass_style="sustained",
      chord_rhythm="bar", groove={}, melody_density=0.12,
      words=("ambient", "ambient soundscape", "ambient piece", "atmospheric music")),
    G(name="bossa nova", tempos=(5, 6), modes=("major",), progressions=("jazz",), lead=("flute", "guitar"),
      bass=("upright bass",), harmony=("guitar",), kits=("acoustic",), bass_style="fifths", chord_rhythm="stabs",
      groove={"rim": "..x..x....x..x..", "closed hat": "x.x.x.x.x.x.x.x.", "kick": "x..x....x..x...."},
      melody_density=0.3, words=("bossa nova", "bossa nova song", "brazilian bossa nova")),
    G(name="hip hop", tempos=(5, 6), modes=("minor", "dorian"), progressions=("sad", "modal"), lead=("piano", "bells"),
      bass=("sub bass", "synth bass"), harmony=("piano", "pad"), kits=("lofi", "electronic"), bass_style="root",
      chord_rhythm="bar",
      groove={"kick": "x.....x...x.....", "snare": "....x.......x...", "closed hat": "x.x.x.x.x.x.x.x."},
      melody_density=0.25, words=("hip hop", "hip hop beat", "boom bap beat", "rap instrumental")),
    G(name="classical", tempos=(5, 6, 4), modes=("major", "minor"), progressions=("classical", "sad"),
      lead=("piano", "strings", "flute"), bass=("upright bass",), harmony=("strings", "piano"), kits=(),
      bass_style="root", chord_rhythm="half", groove={}, melody_density=0.5,
      words=("classical", "classical piece", "orchestral piece", "chamber music")),
    G(name="reggae", tempos=(6, 5), modes=("major", "minor"), progressions=("pop", "modal"), lead=("organ", "guitar"),
      bass=("electric bass",), harmony=("organ", "guitar"), kits=("acoustic",), bass_style="root",
      chord_rhythm="offbeat",
      groove={"kick": "........x.......", "rim": "........x.......", "closed hat": "x.x.x.x.x.x.x.x."},
      melody_density=0.2, words=("reggae", "reggae song", "roots reggae", "one drop reggae")),
    G(name="funk", tempos=(4, 5), modes=("dorian", "minor"), progressions=("blues", "modal"),
      lead=("square lead", "organ"), bass=("electric bass", "synth bass"), harmony=("guitar", "organ"),
      kits=("acoustic",), bass_style="octave", chord_rhythm="stabs",
      groove={"kick": "x..x..x...x..x..", "snare": "....x..x.x..x...", "closed hat": "xxxxxxxxxxxxxxxx"},
      melody_density=0.4, words=("funk", "funky groove", "funk jam", "slap funk")),
    G(name="folk", tempos=(5, 4, 6), modes=("major",), progressions=("pop", "rock"), lead=("flute", "guitar"),
      bass=("upright bass",), harmony=("guitar",), kits=("acoustic", ""), bass_style="fifths", chord_rhythm="half",
      groove={"kick": "x.......x.......", "closed hat": "..x...x...x...x."}, melody_density=0.35,
      words=("folk", "folk song", "acoustic folk", "campfire folk tune")),
]}
MOODS = {
    "happy": dict(modes=("major",), density=1.1, words=("happy", "cheerful", "uplifting", "joyful")),
    "sad": dict(modes=("minor", "dorian"), density=0.8, words=("sad", "melancholic", "somber", "wistful")),
    "calm": dict(modes=None, density=0.6, words=("calm", "peaceful", "relaxing", "gentle")),
    "energetic": dict(modes=None, density=1.4, words=("energetic", "upbeat", "driving", "powerful")),
    "dark": dict(modes=("minor",), density=0.9, words=("dark", "brooding", "moody", "ominous")),
    "dreamy": dict(modes=("major", "dorian"), density=0.7, words=("dreamy", "ethereal", "hazy", "floating")),
}
