"""The score codec of MusicGen-nano: K = 4 musical streams of event tokens, rendered by a synthesiser.

Each codebook is one stream at FRAME_RATE frames per second, all with the same cardinality VOCAB:
    0 lead, 1 bass, 2 harmony (chords), 3 drums.
Per stream, a token is
    REST     silence from this frame on (ends the sounding note)
    HOLD     the previous note (or silence) continues
    NOISE    degradation: the stream is silent and a noise burst sounds in this frame
    DISTORT  degradation: the previous note continues, distorted in this frame
    ≥ FIRST_EVENT  an event: note-on (instrument, pitch) for lead and bass, chord-on (instrument, root,
             quality) for harmony, a combination of drum hits (kit, voices) for drums.
Tempos are chosen so that a 16th note is a whole number of frames (`TEMPOS`), so grooves stay tight.

`ScoreCodec.decode(codes (B, K, T)) -> (B, T * HOP)` renders deterministically at SAMPLE_RATE: wavetable
oscillators with envelopes per timbre, one-shot synthesised drums, a short convolution reverb and a soft
limiter (no clipping). Encoding helpers build tokens; `parse_token` reads them back (for metrics).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

FRAME_RATE = 32
SAMPLE_RATE = 16000
HOP = SAMPLE_RATE // FRAME_RATE  # 500 samples per frame
VOCAB = 512
STREAMS = ("lead", "bass", "harmony", "drums")
REST, HOLD, NOISE, DISTORT = 0, 1, 2, 3
FIRST_EVENT = 4
# A 16th note lasts d frames: 480 / d bpm.
TEMPOS = {d: 15 * FRAME_RATE / d for d in (3, 4, 5, 6, 7, 8)}  # 160, 120, 96, 80, 68.6, 60 bpm

LEAD_INSTRUMENTS = ("piano", "guitar", "organ", "saw lead", "square lead", "bells", "flute", "strings")
LEAD_PITCHES = range(48, 96)  # MIDI C3..B6
BASS_INSTRUMENTS = ("electric bass", "synth bass", "upright bass", "sub bass")
BASS_PITCHES = range(24, 60)  # MIDI C1..B3
CHORD_INSTRUMENTS = ("pad", "organ", "piano", "strings", "guitar")
CHORD_QUALITIES = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11),
                   "min7": (0, 3, 7, 10), "sus4": (0, 5, 7), "dim": (0, 3, 6), "sus2": (0, 2, 7)}
QUALITY_NAMES = tuple(CHORD_QUALITIES)
CHORD_OCTAVE = 48  # chord roots voiced from MIDI C3
DRUM_VOICES = ("kick", "snare", "closed hat", "open hat", "clap", "rim", "crash")
DRUM_KITS = ("acoustic", "electronic", "lofi")

_N_LEAD = len(LEAD_INSTRUMENTS) * len(LEAD_PITCHES)
_N_BASS = len(BASS_INSTRUMENTS) * len(BASS_PITCHES)
_N_CHORD = len(CHORD_INSTRUMENTS) * 12 * len(CHORD_QUALITIES)
_N_DRUM = len(DRUM_KITS) * 2 ** len(DRUM_VOICES)
assert FIRST_EVENT + max(_N_LEAD, _N_BASS, _N_CHORD, _N_DRUM) <= VOCAB


# ---------------------------------------------------------------- tokens
def note_token(stream: str, instrument: str, pitch: int) -> int:
    """Note-on token for the lead or bass stream."""
    instruments, pitches = (LEAD_INSTRUMENTS, LEAD_PITCHES) if stream == "lead" else (BASS_INSTRUMENTS, BASS_PITCHES)
    if stream not in ("lead", "bass"):
        raise ValueError(f"notes live in the lead or bass stream, not {stream!r}")
    if pitch not in pitches:
        raise ValueError(f"{stream} pitch {pitch} outside MIDI {pitches.start}..{pitches.stop - 1}")
    return FIRST_EVENT + instruments.index(instrument) * len(pitches) + pitch - pitches.start


def chord_token(instrument: str, root: int, quality: str) -> int:
    """Chord-on token for the harmony stream; root is a pitch class 0..11."""
    chord = CHORD_INSTRUMENTS.index(instrument) * 12 + root % 12
    return FIRST_EVENT + chord * len(QUALITY_NAMES) + QUALITY_NAMES.index(quality)


def drum_token(kit: str, voices: tuple[str, ...] | list[str]) -> int:
    """Drum-hit token: the set of voices struck in this frame (an empty set is REST)."""
    mask = sum(1 << DRUM_VOICES.index(v) for v in voices)
    return FIRST_EVENT + DRUM_KITS.index(kit) * 2 ** len(DRUM_VOICES) + mask if mask else REST


@dataclass(frozen=True)
class Event:
    stream: str
    instrument: str  # the kit, for drums
    pitches: tuple[int, ...]  # MIDI pitches sounding (empty for drums)
    voices: tuple[str, ...] = ()  # drum voices struck
    chord: tuple[int, str] | None = None  # (root pitch class, quality) for harmony


def parse_token(stream: int | str, token: int) -> Event | None:
    """The event a token starts, or None for REST/HOLD/NOISE/DISTORT and unused ids."""
    name = STREAMS[stream] if isinstance(stream, int) else stream
    i = int(token) - FIRST_EVENT
    if i < 0:
        return None
    if name in ("lead", "bass"):
        instruments, pitches = (LEAD_INSTRUMENTS, LEAD_PITCHES) if name == "lead" else (BASS_INSTRUMENTS, BASS_PITCHES)
        if i >= len(instruments) * len(pitches):
            return None
        return Event(name, instruments[i // len(pitches)], (pitches.start + i % len(pitches),))
    if name == "harmony":
        if i >= _N_CHORD:
            return None
        inst, rest = divmod(i, 12 * len(QUALITY_NAMES))
        root, q = divmod(rest, len(QUALITY_NAMES))
        quality = QUALITY_NAMES[q]
        pitches = tuple(CHORD_OCTAVE + root + iv for iv in CHORD_QUALITIES[quality])
        return Event(name, CHORD_INSTRUMENTS[inst], pitches, chord=(root, quality))
    if i >= _N_DRUM:
        return None
    kit, mask = divmod(i, 2 ** len(DRUM_VOICES))
    return Event(name, DRUM_KITS[kit], (), tuple(v for b, v in enumerate(DRUM_VOICES) if mask >> b & 1))


# ---------------------------------------------------------------- timbres
@dataclass(frozen=True)
class Timbre:
    """A pitched instrument: harmonic spectrum (bright at onset, dark later), envelope, vibrato."""

    bright: tuple[float, ...]  # harmonic amplitudes at the attack
    dark: tuple[float, ...]  # ... and after `brightness_decay` seconds
    attack: float  # s
    decay: float  # s, time constant of the amplitude decay (inf: sustained)
    release: float  # s, fade after note-off
    brightness_decay: float = 0.3  # s
    vibrato: float = 0.0  # depth in semitones
    gain: float = 1.0


def _harmonics(n: int, fn) -> tuple[float, ...]:
    return tuple(float(fn(h)) for h in range(1, n + 1))


INF = float("inf")
TIMBRES = {
    "piano": Timbre(_harmonics(12, lambda h: 1 / h**1.2), _harmonics(12, lambda h: 1 / h**2.5), 0.004, 0.9, 0.12, 0.4),
    "guitar": Timbre(_harmonics(14, lambda h: 1 / h), _harmonics(14, lambda h: 1 / h**3), 0.003, 0.6, 0.08, 0.12),
    "organ": Timbre((1, 0.8, 0.5, 0.6, 0, 0.3, 0, 0.25), (1, 0.8, 0.5, 0.6, 0, 0.3, 0, 0.25), 0.01, INF, 0.06,
                    vibrato=0.05, gain=0.6),
    "saw lead": Timbre(_harmonics(16, lambda h: 1 / h), _harmonics(16, lambda h: 1 / h**1.6), 0.01, INF, 0.08, 0.6,
                       0.12, 0.55),
    "square lead": Timbre(_harmonics(15, lambda h: (h % 2) / h), _harmonics(15, lambda h: (h % 2) / h**1.8), 0.01, INF,
                          0.08, 0.5, 0.1, 0.5),
    "bells": Timbre((1, 0, 0, 0.5, 0, 0, 0.3, 0, 0, 0.15), (1, 0, 0, 0.2), 0.002, 1.5, 0.6, 0.5, gain=0.8),
    "flute": Timbre((1, 0.25, 0.08, 0.03), (1, 0.2, 0.05), 0.05, INF, 0.1, vibrato=0.15, gain=0.9),
    "strings": Timbre(_harmonics(12, lambda h: 1 / h**1.3), _harmonics(12, lambda h: 1 / h**1.5), 0.12, INF, 0.3,
                      vibrato=0.08, gain=0.6),
    "pad": Timbre(_harmonics(8, lambda h: 1 / h**1.5), _harmonics(8, lambda h: 1 / h**2), 0.35, INF, 0.6, gain=0.55),
    "electric bass": Timbre(_harmonics(8, lambda h: 1 / h**1.5), _harmonics(8, lambda h: 1 / h**3), 0.005, 1.2, 0.06,
                            0.2),
    "synth bass": Timbre(_harmonics(12, lambda h: 1 / h), _harmonics(12, lambda h: 1 / h**2.5), 0.005, INF, 0.05, 0.15,
                         gain=0.7),
    "upright bass": Timbre(_harmonics(6, lambda h: 1 / h**2), _harmonics(6, lambda h: 1 / h**3.5), 0.01, 0.7, 0.1, 0.2),
    "sub bass": Timbre((1, 0.1), (1, 0.05), 0.01, INF, 0.08, gain=1.1),
}
TABLE = 2048  # wavetable length


@lru_cache(maxsize=None)
def _wavetable(amplitudes: tuple[float, ...], f0: float) -> np.ndarray:
    """One period of the harmonic spectrum, band-limited below 7 kHz for fundamental f0, peak-normalised."""
    h = np.arange(1, len(amplitudes) + 1)
    a = np.asarray(amplitudes) * (h * f0 < 7000)
    phase = np.arange(TABLE) / TABLE
    table = (a[:, None] * np.sin(2 * np.pi * h[:, None] * phase[None, :])).sum(0)
    return (table / max(np.abs(table).max(), 1e-9)).astype(np.float32)


def _midi_hz(pitch: float) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def _render_note(timbre: Timbre, pitch: int, n_on: int) -> np.ndarray:
    """A note held for n_on samples plus its release tail."""
    n = n_on + int(timbre.release * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    f0 = _midi_hz(pitch)
    freq = f0 * (1 + (2 ** (timbre.vibrato / 12) - 1) * np.sin(2 * np.pi * 5.0 * t)) if timbre.vibrato else f0
    phase = np.cumsum(np.broadcast_to(freq, t.shape)) / SAMPLE_RATE if timbre.vibrato else f0 * t
    idx = ((phase % 1.0) * TABLE).astype(np.int64) % TABLE
    mix = np.exp(-t / timbre.brightness_decay)
    dark, bright = _wavetable(timbre.dark, f0)[idx], _wavetable(timbre.bright, f0)[idx]
    wave = dark + mix * (bright - dark)
    env = np.minimum(1.0, t / timbre.attack)
    if timbre.decay != INF:
        env *= np.exp(-t / timbre.decay)
    t_off = n_on / SAMPLE_RATE
    env *= np.clip(1 - (t - t_off) / timbre.release, 0, 1)  # linear release after note-off: no clicks
    return (wave * env * timbre.gain).astype(np.float32)


def _drum_samples() -> dict[tuple[str, str], np.ndarray]:
    """One-shot drum sounds per (kit, voice), synthesised once from a fixed seed."""
    rng = np.random.default_rng(1234)
    out = {}
    for kit in DRUM_KITS:
        boom, noise_lp = {"acoustic": (0.25, 0.5), "electronic": (0.55, 0.0), "lofi": (0.3, 0.85)}[kit]
        for voice in DRUM_VOICES:
            dur = {"kick": 0.1 + boom, "snare": 0.25, "closed hat": 0.06, "open hat": 0.35, "clap": 0.3,
                   "rim": 0.05, "crash": 1.2}[voice]
            t = np.arange(int(dur * SAMPLE_RATE)) / SAMPLE_RATE
            noise = rng.standard_normal(len(t))
            if voice == "kick":
                f = 45 + 110 * np.exp(-t / 0.03)
                x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.exp(-t / (0.05 + boom / 3))
            elif voice == "snare":
                x = 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04) + 0.6 * noise * np.exp(-t / 0.07)
            elif voice in ("closed hat", "open hat", "crash"):
                hp = noise - np.concatenate([[0], noise[:-1]])  # first difference: a crude high-pass
                x = 0.4 * hp * np.exp(-t / {"closed hat": 0.015, "open hat": 0.12, "crash": 0.5}[voice])
            elif voice == "clap":
                bursts = sum(np.exp(-np.maximum(t - d, 0) / 0.01) * (t >= d) for d in (0, 0.012, 0.024))
                x = 0.6 * noise * (bursts + np.exp(-t / 0.08)) / 2
            else:  # rim
                x = 0.6 * np.sin(2 * np.pi * 1700 * t) * np.exp(-t / 0.012)
            if noise_lp:  # lofi / acoustic softening: one-pole low-pass via cumulative filtering in blocks
                x = np.convolve(x, np.full(int(1 + 6 * noise_lp), 1 / int(1 + 6 * noise_lp)), mode="same")
            fade = np.clip((len(t) - np.arange(len(t))) / (0.005 * SAMPLE_RATE), 0, 1)  # no click at the end
            out[kit, voice] = (x * fade).astype(np.float32)
    return out


def _reverb_ir() -> np.ndarray:
    rng = np.random.default_rng(99)
    t = np.arange(int(0.6 * SAMPLE_RATE)) / SAMPLE_RATE
    ir = rng.standard_normal(len(t)) * np.exp(-t / 0.15)
    ir[: int(0.01 * SAMPLE_RATE)] = 0  # 10 ms pre-delay
    return (ir / np.sqrt((ir ** 2).sum())).astype(np.float32)


# ---------------------------------------------------------------- codec
FADE_OUT = int(0.01 * SAMPLE_RATE)
STREAM_GAIN = {"lead": 0.2, "bass": 0.22, "harmony": 0.14, "drums": 0.42}


RENDERERS = ("soundfont", "synth")  # recorded GM instruments, stereo 32 kHz; the wavetable synthesiser, mono 16 kHz


class ScoreCodec:
    """codes (B, 4, T) -> waveforms; deterministic, no learned parameters.

    `renderer`: "synth", the wavetable synthesiser here (mono, 16 kHz: what E, the scorers and the shipped θ were
    trained with), or "soundfont", recorded General MIDI instruments (`engine.soundfont`: stereo, 32 kHz).
    `decode(codes)` is mono (B, samples), the channels averaged; `decode(codes, keep_channels=True)` is
    (B, channels, samples)."""

    frame_rate = float(FRAME_RATE)
    num_codebooks = len(STREAMS)
    cardinality = VOCAB

    def __init__(self, reverb: float = 0.18, renderer: str = "synth", soundfont: str | None = None):
        if renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
        self.reverb, self.renderer = reverb, renderer
        self._drums = _drum_samples()
        self._ir = _reverb_ir()
        self._soundfont = None
        if renderer == "soundfont":
            from engine.soundfont import SoundFontRenderer  # noqa: PLC0415 (symusic only when it plays)

            self._soundfont = SoundFontRenderer(soundfont)
        self.sample_rate = self._soundfont.sample_rate if self._soundfont else SAMPLE_RATE
        self.channels = self._soundfont.channels if self._soundfont else 1

    @property
    def description(self) -> str:
        """What the takes sound like, for the page and the log."""
        if self._soundfont is None:
            return "nano's wavetable synthesiser (mono, 16 kHz)"
        return f"the {self._soundfont.bank.name} SoundFont (stereo, {self.sample_rate // 1000} kHz)"

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, keep_channels: bool = False) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.ndim != 3 or codes.shape[1] != len(STREAMS):
            raise ValueError(f"codes must be (batch, {len(STREAMS)}, frames), got {tuple(codes.shape)}")
        arr = codes.cpu().numpy()
        if self._soundfont is not None:
            audio = np.stack([self._soundfont.render(clip) for clip in arr])
        else:
            audio = np.stack([self._render(clip) for clip in arr])[:, None]
        return torch.from_numpy(audio if keep_channels else audio.mean(axis=1))

    def _render(self, clip: np.ndarray) -> np.ndarray:
        T = clip.shape[-1]
        n = T * HOP
        mix = np.zeros(n, dtype=np.float32)
        for k, name in enumerate(STREAMS):
            tokens = clip[k]
            stream = self._render_drums(tokens, n) if name == "drums" else self._render_pitched(name, tokens, n)
            stream = degrade(stream, tokens, HOP)
            mix += STREAM_GAIN[name] * stream
        if self.reverb:
            wet = np.fft.irfft(np.fft.rfft(mix, 2 * n) * np.fft.rfft(self._ir, 2 * n), 2 * n)[:n]
            mix = mix + self.reverb * wet.astype(np.float32)
        mix[-FADE_OUT:] *= np.linspace(1, 0, min(FADE_OUT, n), dtype=np.float32)  # notes cut at the end: no click
        return (0.95 * np.tanh(mix / 0.95)).astype(np.float32)  # soft limiter: never clips

    @staticmethod
    def _notes(tokens: np.ndarray) -> list[tuple[int, int, int]]:
        """(start frame, end frame, token) of every event; HOLD and DISTORT continue a note."""
        onsets = np.flatnonzero(tokens >= FIRST_EVENT)
        breaks = np.flatnonzero((tokens != HOLD) & (tokens != DISTORT))
        ends = breaks[np.minimum(np.searchsorted(breaks, onsets, side="right"), len(breaks) - 1)]
        ends = np.where(ends > onsets, ends, len(tokens))
        return list(zip(onsets.tolist(), ends.tolist(), tokens[onsets].tolist()))

    def _render_pitched(self, name: str, tokens: np.ndarray, n: int) -> np.ndarray:
        out = np.zeros(n + SAMPLE_RATE * 2, dtype=np.float32)
        for start, end, token in self._notes(tokens):
            event = parse_token(name, token)
            if event is None:
                continue
            timbre = TIMBRES[event.instrument]
            voices = len(event.pitches)
            for pitch in event.pitches:
                note = _render_note(timbre, pitch, (end - start) * HOP) / np.sqrt(voices)
                out[start * HOP:start * HOP + len(note)] += note
        return out[:n]

    def _render_drums(self, tokens: np.ndarray, n: int) -> np.ndarray:
        out = np.zeros(n + SAMPLE_RATE * 2, dtype=np.float32)
        for frame in np.flatnonzero(tokens >= FIRST_EVENT).tolist():
            event = parse_token("drums", tokens[frame])
            if event is None:
                continue
            for voice in event.voices:
                hit = self._drums[event.instrument, voice]
                out[frame * HOP:frame * HOP + len(hit)] += hit
        return out[:n]



def degrade(stream: np.ndarray, tokens: np.ndarray, hop: int, noise_level: float = 0.8) -> np.ndarray:
    """NOISE frames: silence + a noise burst; DISTORT frames: the stream clipped hard (`hop` samples per frame; the
    same for every renderer, so a degraded take sounds degraded through any of them; `noise_level`: the burst's peak,
    about the level of the renderer's notes)."""
    noise, distort = tokens == NOISE, tokens == DISTORT
    if not noise.any() and not distort.any():
        return stream
    fade = max(1, round(40 * hop / HOP))  # 2.5 ms fades
    ramp = np.minimum(1, np.minimum(np.arange(hop), np.arange(hop)[::-1]) / fade)
    stream = stream.copy()
    for frame in np.flatnonzero(distort).tolist():
        seg = stream[frame * hop:(frame + 1) * hop]
        seg += ramp * (np.clip(seg * 12, -0.6, 0.6) - seg)
    rng = np.random.default_rng(int(tokens.sum()) % 2**32)  # deterministic per clip
    for frame in np.flatnonzero(noise).tolist():
        stream[frame * hop:(frame + 1) * hop] = ramp * noise_level * rng.standard_normal(hop).astype(np.float32)
    return stream
