"""Procedural, captioned music corpus for MusicGen-nano, in score-codec tokens.

Every example is made from its own seed (corpus seed, index), so the corpus is deterministic, any slice can
be regenerated alone, and the held-out split is fixed by index. Many pieces share a caption: a prompt like
"Rock song." has real diversity (tempo, key, progression, melody, instruments, groove variations).
A slice (`DEGRADED_FRACTION`) is degraded (wrong notes, erratic timing, noise bursts, distortion) and captioned
as bad audio, so that the negative prompt "Bad audio quality." means something.

    python -m training.corpus --n 2000 --out runs/corpus --render 6      # tokens + captions + a few WAVs
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from engine.score_codec import (
    DISTORT,
    FRAME_RATE,
    HOLD,
    NOISE,
    REST,
    TEMPOS,
    ScoreCodec,
    chord_token,
    drum_token,
    note_token,
)

DEGRADED_FRACTION = 0.12
HELD_OUT_EVERY = 20  # index % 20 == 0 -> held out (5 %)

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
BAD_CAPTIONS = ("Bad audio quality.", "low quality, noisy recording", "distorted, badly played", "poor quality audio",
                "noisy and glitchy recording", "bad recording with wrong notes",
                "lo-fi mess, distorted and out of time")


@dataclass
class Piece:
    index: int
    codes: np.ndarray  # (4, T) int16 tokens
    caption: str
    attributes: dict


def _fix_quality(mode: tuple[int, ...], degree: int, quality: str | None) -> tuple[int, str]:
    root = mode[degree % 7]
    if quality is not None:
        return root, quality
    third, fifth = (mode[(degree + 2) % 7] - root) % 12, (mode[(degree + 4) % 7] - root) % 12
    return root, "maj" if third == 4 else ("dim" if fifth == 6 else "min")


def _pattern(s: str) -> np.ndarray:
    return np.array([c == "x" for c in s])


@dataclass
class _Style:
    """What a piece's random draws chose before its notes: genre, mood, mode, tempo, key, instruments, chords."""

    genre: Genre
    mood_name: str
    mode_name: str
    mode: tuple[int, ...]
    d: int  # frames per 16th
    key: int
    lead: str
    bass: str
    chords: str
    kit: str | None
    prog: list[tuple[int, str]]
    density: float  # melody onsets


def _choose_style(rng: np.random.Generator) -> _Style:
    genre = GENRES[rng.choice(sorted(GENRES))]
    mood_name = str(rng.choice(sorted(MOODS)))
    mood = MOODS[mood_name]
    modes = [m for m in genre.modes if mood["modes"] is None or m in mood["modes"]] or list(genre.modes)
    mode_name = str(rng.choice(modes))
    mode = MODES[mode_name]
    tempos = list(genre.tempos)
    if mood_name == "energetic":
        tempos = sorted(tempos)[:1] + tempos
    elif mood_name in ("calm", "sad", "dreamy"):
        tempos = sorted(tempos)[-1:] + tempos
    d = int(rng.choice(tempos))
    key = int(rng.integers(12))
    lead, bass, chords = (str(rng.choice(x)) for x in (genre.lead, genre.bass, genre.harmony))
    kit = (str(rng.choice(genre.kits)) if genre.kits else "") or None
    prog = [_fix_quality(mode, deg, q) for deg, q in PROGRESSIONS[str(rng.choice(genre.progressions))]]
    if rng.random() < 0.3:  # variation: rotate the progression
        prog = prog[1:] + prog[:1]
    density = genre.melody_density * mood["density"] * rng.uniform(0.8, 1.2)
    return _Style(genre, mood_name, mode_name, mode, d, key, lead, bass, chords, kit, prog, density)


def _harmony(codes: np.ndarray, st: _Style, f: int, beat_pos: int, root_pc: int, quality: str, rng) -> None:
    rhythm = st.genre.chord_rhythm
    chord_on = {
        "bar": beat_pos == 0,
        "half": beat_pos in (0, 8),
        "offbeat": beat_pos in (4, 12),
        "stabs": beat_pos in (0, 6, 10) and rng.random() < 0.8,
    }[rhythm]
    if chord_on:
        codes[2, f] = chord_token(st.chords, root_pc, quality)
        if rhythm in ("offbeat", "stabs"):
            codes[2, min(f + 2 * st.d, codes.shape[1] - 1)] = REST  # short, skank-like chords


def _bass(codes: np.ndarray, st: _Style, f: int, beat_pos: int, root_pc: int, rng) -> None:
    base = 28 + (root_pc - 4) % 12  # lowest octave E1..D#2
    style, mode = st.genre.bass_style, st.mode
    bass_on, bass_pitch = False, base
    if style == "root":
        bass_on = beat_pos in (0, 6, 8) or (beat_pos == 14 and rng.random() < 0.4)
    elif style == "octave":
        bass_on, bass_pitch = beat_pos % 2 == 0, base + 12 * (beat_pos % 4 == 2)
    elif style == "walking":
        bass_on = beat_pos % 4 == 0
        bass_pitch = base + (0, mode[2] - mode[0], 7, mode[4] % 12 + 2)[beat_pos // 4 % 4] % 12
    elif style == "fifths":
        bass_on, bass_pitch = beat_pos in (0, 8), base + 7 * (beat_pos == 8)
    elif style == "offbeat":
        bass_on = beat_pos % 4 == 2
    elif style == "sustained":
        bass_on = beat_pos == 0
    if bass_on:
        codes[1, f] = note_token("bass", st.bass, int(np.clip(bass_pitch, 24, 59)))


def _drums(codes: np.ndarray, st: _Style, f: int, beat_pos: int, bar: int, rng) -> None:
    if st.kit is None:
        return
    hits = [v for v, pat in st.genre.groove.items() if pat[beat_pos] == "x" and rng.random() < 0.95]
    if st.mood_name == "energetic" and beat_pos % 2 == 1 and rng.random() < 0.3:
        hits.append("closed hat")
    if bar % 4 == 3 and beat_pos >= 12 and rng.random() < 0.5:  # fill
        hits.append("snare")
    if bar % 4 == 0 and beat_pos == 0 and rng.random() < 0.3:
        hits.append("crash")
    if hits:
        codes[3, f] = drum_token(st.kit, sorted(set(hits)))


def _melody(codes: np.ndarray, st: _Style, f: int, beat_pos: int, root_pc: int, quality: str, pitch: int, rng) -> int:
    """A random walk on the scale, onsets by density, rests sometimes; returns the melody's current pitch."""
    if not rng.random() < st.density * (1.5 if beat_pos % 4 == 0 else 0.8):
        return pitch
    if rng.random() < 0.12:
        codes[0, f] = REST
        return pitch
    scale_pitches = [p for p in range(48, 96) if (p - st.key) % 12 in st.mode]
    i = int(np.argmin([abs(p - pitch) for p in scale_pitches]))
    i = int(np.clip(i + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(scale_pitches) - 1))
    if beat_pos == 0 and rng.random() < 0.5:  # land on a chord tone
        chord_pcs = [(root_pc + iv) % 12 for iv in (0, 4 if quality in ("maj", "7", "maj7") else 3, 7)]
        cands = [p for p in scale_pitches if p % 12 in chord_pcs]
        i = scale_pitches.index(min(cands, key=lambda p: abs(p - scale_pitches[i])))
    codes[0, f] = note_token("lead", st.lead, scale_pitches[i])
    return scale_pitches[i]


def generate_piece(seed: int, index: int, frames: int) -> Piece:
    """One piece of `frames` frames, fully determined by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    degraded = rng.random() < DEGRADED_FRACTION
    st = _choose_style(rng)
    steps = -(-frames // st.d)  # 16th steps covering the clip
    codes = np.full((4, steps * st.d), HOLD, dtype=np.int16)
    codes[:, 0] = REST
    lead_off = int(rng.integers(0, 2)) * 12  # register
    melody_pitch = 60 + lead_off + st.key + st.mode[int(rng.integers(0, 5))]
    for step in range(steps):
        f, beat_pos, bar = step * st.d, step % 16, step // 16
        root, quality = st.prog[bar % len(st.prog)]
        root_pc = (st.key + root) % 12
        _harmony(codes, st, f, beat_pos, root_pc, quality, rng)
        _bass(codes, st, f, beat_pos, root_pc, rng)
        _drums(codes, st, f, beat_pos, bar, rng)
        melody_pitch = _melody(codes, st, f, beat_pos, root_pc, quality, melody_pitch, rng)
    attributes = dict(genre=st.genre.name, mood=st.mood_name, mode=st.mode_name, key=KEYS[st.key],
                      tempo_bpm=round(TEMPOS[st.d], 1), sixteenth_frames=st.d, lead=st.lead, bass=st.bass,
                      harmony=st.chords, drums=st.kit, degraded=bool(degraded))
    if degraded:
        codes = _degrade(codes, rng)
    codes = codes[:, :frames]
    caption = str(rng.choice(BAD_CAPTIONS)) if degraded else caption_for(attributes, rng)
    return Piece(index, codes, caption, attributes)


def _degrade(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Wrong notes, erratic timing, noise bursts, distortion: each with some probability, at least one."""
    codes = codes.copy()
    kinds = ([k for k in ("wrong", "timing", "noise", "distort") if rng.random() < 0.5]
             or [str(rng.choice(["noise", "distort"]))])
    T = codes.shape[1]
    for k in range(3 if "wrong" in kinds else 0):  # wrong notes: shift pitched events by a semitone or a tritone
        on = np.flatnonzero(codes[k] >= 4)
        for f in rng.choice(on, size=len(on) // 3, replace=False) if len(on) else []:
            # neighbours in the same instrument block
            codes[k, f] = max(4, int(codes[k, f]) + int(rng.choice([-1, 1, 6])))
    if "timing" in kinds:  # erratic timing: move events by a few frames
        for k in range(4):
            for f in np.flatnonzero(codes[k] >= 4):
                g = int(np.clip(f + rng.integers(-3, 4), 1, T - 1))
                if codes[k, g] == HOLD:
                    codes[k, g], codes[k, f] = codes[k, f], HOLD
    if "noise" in kinds:
        for f in rng.integers(1, T, size=int(rng.integers(2, 6))):
            codes[int(rng.integers(4)), f:f + int(rng.integers(2, 6))] = NOISE
    if "distort" in kinds:
        for k in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            start = int(rng.integers(1, T))
            seg = codes[k, start:start + int(rng.integers(FRAME_RATE // 2, 3 * FRAME_RATE))]
            seg[seg == HOLD] = DISTORT
    return codes


def caption_for(a: dict, rng: np.random.Generator) -> str:
    """A free-text caption naming some of the attributes: full sentences, short tags, or fragments."""
    g = str(rng.choice(GENRES[a["genre"]].words))
    mood = str(rng.choice(MOODS[a["mood"]]["words"]))
    inst = _instruments(a)
    rng.shuffle(inst)
    forms = _caption_forms(a, g, mood, list(dict.fromkeys(inst)))
    return forms[int(rng.integers(len(forms)))]()


def possible_captions(a: dict) -> set[str]:
    """Every caption `caption_for` can give a piece with attributes `a` (every wording, instrument order and
    form): the captions that are true of it. Degraded pieces' bad-audio captions are not included."""
    out = set()
    for g in GENRES[a["genre"]].words:
        for mood in MOODS[a["mood"]]["words"]:
            for order in itertools.permutations(_instruments(a)):
                for form in _caption_forms(a, str(g), str(mood), list(dict.fromkeys(order))):
                    try:
                        out.add(form())
                    except IndexError:  # a form naming more instruments than the piece has: never drawn for it
                        pass
    return out


def _instruments(a: dict) -> list[str]:
    inst = [a["lead"], a["harmony"], a["bass"]]
    if a["drums"]:
        inst.append({"electronic": "drum machine", "lofi": "dusty drums", "acoustic": "drums"}[a["drums"]])
    return inst


def _caption_forms(a: dict, g: str, mood: str, inst: list[str]) -> list:
    speed = "fast" if a["tempo_bpm"] >= 120 else ("slow" if a["tempo_bpm"] <= 80 else "mid-tempo")
    key = f"{a['key']} {'major' if a['mode'] == 'major' else 'minor' if a['mode'] == 'minor' else 'dorian'}"
    return [
        lambda: f"A {mood} {g} with {inst[0]} and {inst[1]}.",
        lambda: f"{g.capitalize()}.",
        lambda: f"{g.capitalize()} song.",
        lambda: f"{mood} {inst[0]}",
        lambda: f"{mood} {g}",
        lambda: f"{speed} {g} at {a['tempo_bpm']:g} BPM in {key}",
        lambda: f"{g}, {', '.join(inst[:3])}",
        lambda: f"A {speed}, {mood} {g} in {key} featuring {inst[0]}.",
        lambda: f"{inst[0]} and {inst[1]}, {mood} mood",
        lambda: f"{g} instrumental with {'no drums' if not a['drums'] else inst[-1]}, {a['tempo_bpm']:g} bpm",
    ]


def render(pieces: list[Piece], codec, batch: int = 32):
    """Audio (len(pieces), samples) of equally long pieces through the score codec (a torch tensor)."""

    out = []
    for j in range(0, len(pieces), batch):
        codes = np.stack([pc.codes for pc in pieces[j:j + batch]]).astype(np.int64)
        out.append(codec.decode(torch.as_tensor(codes)))
    return torch.cat(out)


def split_of(index: int) -> str:
    return "heldout" if index % HELD_OUT_EVERY == 0 else "train"


def training_prompts(seed: int, n: int, frames: int = 32) -> list[str]:
    """The first n clean captions of the training split (the prompts of the finetuning)."""
    out, i = [], 0
    while len(out) < n:
        if split_of(i) == "train":
            piece = generate_piece(seed, i, frames)
            if not piece.attributes["degraded"]:
                out.append(piece.caption)
        i += 1
    return out


def heldout_prompts(seed: int, n: int, frames: int = 32) -> list[str]:
    """The first n clean captions of the held-out split (the prompts of every evaluation)."""
    out, i = [], 0
    while len(out) < n:
        piece = generate_piece(seed, i, frames)
        if not piece.attributes["degraded"]:
            out.append(piece.caption)
        i += HELD_OUT_EVERY
    return out


def generate_corpus(seed: int, n: int, frames: int, start: int = 0) -> list[Piece]:
    return [generate_piece(seed, i, frames) for i in range(start, start + n)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", default="runs/corpus")
    p.add_argument("--render", type=int, default=4, help="also write this many examples as WAV")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = int(args.seconds * FRAME_RATE)
    pieces = generate_corpus(args.seed, args.n, frames)
    np.save(out / "codes.npy", np.stack([pc.codes for pc in pieces]))
    with open(out / "meta.jsonl", "w") as f:
        for pc in pieces:
            f.write(json.dumps(dict(index=pc.index, split=split_of(pc.index), caption=pc.caption,
                                    **pc.attributes)) + "\n")
    if args.render:
        codec = ScoreCodec()
        for pc in pieces[:args.render]:
            audio = codec.decode(torch.as_tensor(pc.codes[None].astype(np.int64)))[0].numpy()
            sf.write(out / f"{pc.index:05d}.wav", audio, codec.sample_rate)
    print(f"wrote {len(pieces)} pieces to {out}")


if __name__ == "__main__":
    main()
