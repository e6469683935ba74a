"""nano's notes played by recorded instruments: a General MIDI SoundFont, in stereo, at MusicGen's 32 kHz.

Every nano token is a symbolic event (an instrument and pitch, a chord, a set of drum hits): exactly what a General
MIDI (GM) SoundFont plays with sampled instruments. `SoundFontRenderer.render(clip (4, T)) -> (2, T * hop)`:

1. each stream becomes MIDI tracks: one per instrument it uses (its GM program, `GM_PROGRAMS`), or one per drum kit
   (GM drum notes, `DRUM_NOTES`, on the kit's GM percussion program, `KIT_PROGRAMS`);
2. each stream is rendered on its own by symusic's synthesiser (prestosynth: MIT, a C++ wheel, no system library;
   it ignores MIDI pan, so the image is made here), its NOISE/DISTORT frames degraded as the wavetable synthesiser
   does (`score_codec.degrade`), and placed in the stereo field (`PAN`, constant-power);
3. the mix gets a short stereo room (two decorrelated tails) and a fade at the very end.

Loudness is not set here: every take of every model is normalised in one place (`engine.loudness`).

The bank: the first of `SOUNDFONTS` present on this machine (Debian's FluidR3 GM or MuseScore General where
installed; otherwise TimGM6mb, which arrives with pip inside the `pretty_midi` wheel), or a file named by
`--soundfont`. symusic is pinned to 0.5.9: 0.6.0's `render` fails on every score ("Unable to convert function
return value to a Python type", measured here).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import score_codec as sc

SAMPLE_RATE = 32000  # MusicGen's rate: nano and real takes then share players, files and scorers' resampling
HOP = SAMPLE_RATE // sc.FRAME_RATE  # 1000 samples per frame
TICKS_PER_QUARTER = 960
SECONDS_PER_QUARTER = 0.5  # the MIDI file's tempo: 120 bpm, so one tick is 1 / 1920 s (notes land within 0.5 ms)

# GM programs (0-based) for nano's instruments: the nearest General MIDI sound to each wavetable timbre
GM_PROGRAMS = {
    "piano": 0, "guitar": 25, "organ": 16, "saw lead": 81, "square lead": 80, "bells": 14, "flute": 73,
    "strings": 48, "pad": 89, "electric bass": 33, "synth bass": 38, "upright bass": 32, "sub bass": 39,
}
KIT_PROGRAMS = {"acoustic": 0, "electronic": 24, "lofi": 8}  # GM2 kits: Standard, Electronic, Room (banks without
# them fall back to Standard)
DRUM_NOTES = {"kick": 36, "snare": 38, "closed hat": 42, "open hat": 46, "clap": 39, "rim": 37, "crash": 49}
VELOCITY = {"lead": 96, "bass": 100, "harmony": 72, "drums": 104}  # harmony under the tune, as the mixer would
STREAM_GAIN = {"lead": 1.0, "bass": 0.75, "harmony": 0.4, "drums": 1.3}  # the tune on top: RMS about 1 : 0.8 :
# 0.55 : 0.85 with TimGM6mb (FluidR3 GM: 1 : 0.75 : 0.3 : 0.75), from the streams' median levels over 8 corpus pieces
NOISE_LEVEL = 0.35  # a NOISE frame's burst: about the median peak of a SoundFont stream (the synth's notes peak at 1
# and its bursts at 0.8)
PAN = {"lead": 0.2, "bass": 0.0, "harmony": -0.35, "drums": 0.0}  # -1 left … +1 right; bass and kick centred
REVERB_MIX = 0.12
FADE_OUT = int(0.01 * SAMPLE_RATE)  # notes cut by the take's end: no click


@dataclass(frozen=True)
class SoundFont:
    name: str
    path: Path
    licence: str


def _pretty_midi_bank() -> Path | None:
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "TimGM6mb.sf2"


def soundfonts() -> list[SoundFont]:
    """The GM banks this code knows, best first (sound quality; all three are General MIDI banks)."""
    known = [SoundFont("FluidR3 GM", Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), "MIT (Debian fluid-soundfont-gm)"),
             SoundFont("MuseScore General", Path("/usr/share/sounds/sf3/MuseScore_General.sf3"),
                       "MIT (Debian musescore-general-soundfont-small)")]
    tim = _pretty_midi_bank()
    if tim is not None:
        known.append(SoundFont("TimGM6mb", tim, "GPL-2.0 (Tim Brechbill; inside the pretty_midi wheel)"))
    return known


def find_soundfont(path: str | Path | None = None) -> SoundFont:
    """The bank to play: `path` (or $MUSIC_SOUNDFONT) if given, else the best one installed."""
    path = path or os.environ.get("MUSIC_SOUNDFONT")
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no SoundFont there (an .sf2 or .sf3 file is needed)")
        if p.suffix.lower() not in (".sf2", ".sf3"):
            raise ValueError(f"{p}: not a SoundFont (.sf2 or .sf3)")
        known = [b for b in soundfonts() if b.path.is_file() and b.path.resolve() == p.resolve()]
        return known[0] if known else SoundFont(p.stem, p, "as its author states")
    for bank in soundfonts():
        if bank.path.is_file():
            return bank
    raise FileNotFoundError("no General MIDI SoundFont found: `pip install -r requirements.txt` brings TimGM6mb "
                            "(pretty_midi); or name one with --soundfont FILE, or use --renderer synth")


def _seconds(frame: int) -> int:
    """A frame's start in MIDI ticks."""
    return round(frame / sc.FRAME_RATE / SECONDS_PER_QUARTER * TICKS_PER_QUARTER)


class SoundFontRenderer:
    """Score tokens (4, T) -> stereo audio (2, T * HOP) at 32 kHz through a GM SoundFont; deterministic."""

    sample_rate = SAMPLE_RATE
    hop = HOP
    channels = 2

    def __init__(self, soundfont: str | Path | None = None, reverb: float = REVERB_MIX):
        import symusic  # noqa: PLC0415 (a C++ extension: loaded only when a SoundFont plays)

        self.bank = find_soundfont(soundfont)
        self.reverb = reverb
        self._symusic = symusic
        self._synth = symusic.Synthesizer(str(self.bank.path), SAMPLE_RATE, 0)
        self._room = _room_ir()

    def render(self, clip: np.ndarray) -> np.ndarray:
        n = clip.shape[-1] * HOP
        mix = np.zeros((2, n), dtype=np.float32)
        for k, name in enumerate(sc.STREAMS):
            tokens = np.asarray(clip[k])
            stream = self._stream(name, tokens, n)
            if stream is None:  # no notes: silent, unless a degradation sounds in it
                if not np.isin(tokens, (sc.NOISE, sc.DISTORT)).any():
                    continue
                stream = np.zeros((2, n), dtype=np.float32)
            stream = np.stack([sc.degrade(ch, tokens, HOP, NOISE_LEVEL) for ch in stream])
            mix += STREAM_GAIN[name] * _pan(stream, PAN[name])
        if self.reverb:
            mix = mix + self.reverb * _convolve(mix, self._room)
        mix[:, -FADE_OUT:] *= np.linspace(1, 0, min(FADE_OUT, n), dtype=np.float32)
        return mix

    def _stream(self, name: str, tokens: np.ndarray, n: int) -> np.ndarray | None:
        """One stream through the synthesiser: (2, n), or None if it plays nothing."""
        tracks = self._tracks(name, tokens)
        if not tracks:
            return None
        score = self._symusic.Score(TICKS_PER_QUARTER)
        score.tempos.append(self._symusic.Tempo(0, qpm=60 / SECONDS_PER_QUARTER))
        for track in tracks.values():
            score.tracks.append(track)
        audio = np.asarray(self._synth.render(score, stereo=True), dtype=np.float32)[:, :n]
        return np.pad(audio, ((0, 0), (0, n - audio.shape[1]))) if audio.shape[1] < n else audio

    def _tracks(self, name: str, tokens: np.ndarray) -> dict:
        """The stream's notes as symusic tracks, one per GM program (drums: per kit)."""
        s, tracks = self._symusic, {}
        for start, end, token in sc.ScoreCodec._notes(tokens):
            event = sc.parse_token(name, token)
            if event is None:
                continue
            drums = name == "drums"
            program = KIT_PROGRAMS[event.instrument] if drums else GM_PROGRAMS[event.instrument]
            if (drums, program) not in tracks:
                tracks[drums, program] = s.Track(name=f"{name} {event.instrument}", program=program, is_drum=drums)
            notes = tracks[drums, program].notes
            t0 = _seconds(start)
            if drums:  # hits: a short note each (the sample plays out)
                for voice in event.voices:
                    notes.append(s.Note(t0, _seconds(1), DRUM_NOTES[voice], VELOCITY[name]))
            else:
                for pitch in event.pitches:
                    notes.append(s.Note(t0, max(1, _seconds(end) - t0), pitch, VELOCITY[name]))
        return tracks


def _pan(stereo: np.ndarray, position: float) -> np.ndarray:
    """Constant-power balance of a stereo signal: position -1 (left) … 0 (unchanged) … +1 (right)."""
    angle = (position + 1) * np.pi / 4  # 0 … π/2
    gains = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32) * np.sqrt(2)
    return stereo * gains[:, None]


def _room_ir() -> np.ndarray:
    """A short room (0.5 s, decorrelated left and right tails, 12 ms pre-delay), unit energy per channel."""
    rng = np.random.default_rng(7)
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    ir = rng.standard_normal((2, len(t))) * np.exp(-t / 0.12)
    ir[:, : int(0.012 * SAMPLE_RATE)] = 0
    return (ir / np.sqrt((ir ** 2).sum(axis=1, keepdims=True))).astype(np.float32)


def _convolve(mix: np.ndarray, ir: np.ndarray) -> np.ndarray:
    from scipy.signal import oaconvolve  # noqa: PLC0415 (overlap-add: 3x faster here than one long FFT)

    return oaconvolve(mix, ir, axes=1)[:, :mix.shape[1]].astype(np.float32)
