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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from engine.nano_world import GENRES, KEYS, MODES, MOODS, PROGRESSIONS, Genre
from engine.score_codec import (
    BASS_INSTRUMENTS,
    CHORD_INSTRUMENTS,
    DISTORT,
    DRUM_KITS,
    FRAME_RATE,
    HOLD,
    LEAD_INSTRUMENTS,
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
TEST_PROMPT_POOL = 64  # the first 64 clean held-out captions are test prompts; the later ones validate

# Caption noise of nano v2's pretraining, fixed before any v2 model was trained (and written in its model card). Real
# text-to-music models learn from scraped captions that are often generic ("instrumental music"), name only a few
# attributes and get some wrong; a model trained on exact captions has nothing left for guidance to recover.
GENERIC_SHARE = 0.20  # captions replaced by a generic one that names nothing checkable
WRONG_SHARE = 0.25  # each attribute a caption could name is replaced by a wrong value with this probability
# omitted attributes need no rate of their own: every caption form names a subset of them (see _caption_forms)
GENERIC_CAPTIONS = ("Instrumental music.", "instrumental", "background music", "a song", "music track",
                    "my new track", "untitled", "royalty free music", "demo recording", "nice tune",
                    "music for videos", "a piece of music")
NOISE_STREAM = 1  # the noisy caption's random draws: rng([seed, index, NOISE_STREAM]), apart from the piece's own
WRONG_VALUES = {  # what a wrong attribute may be replaced by (any other value of the same field)
    "genre": tuple(GENRES), "mood": tuple(MOODS), "key": KEYS, "mode": tuple(MODES),
    "tempo_bpm": tuple(round(b, 1) for b in TEMPOS.values()), "lead": LEAD_INSTRUMENTS,
    "harmony": CHORD_INSTRUMENTS, "bass": BASS_INSTRUMENTS, "drums": (None, *DRUM_KITS)}

BAD_CAPTIONS = ("Bad audio quality.", "low quality, noisy recording", "distorted, badly played", "poor quality audio",
                "noisy and glitchy recording", "bad recording with wrong notes",
                "lo-fi mess, distorted and out of time")


@dataclass
class Piece:
    index: int
    codes: np.ndarray  # (4, T) int16 tokens
    caption: str  # true of the piece (or a bad-audio caption for a degraded one): what prompts and checks use
    attributes: dict
    noisy_caption: str = ""  # the scraped-like caption pretraining sees (`noisy_caption`); "" = not made


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
    noisy = caption if degraded else noisy_caption(attributes, np.random.default_rng([seed, index, NOISE_STREAM]))
    return Piece(index, codes, caption, attributes, noisy)


def noisy_caption(a: dict, rng: np.random.Generator) -> str:
    """A caption as scraped from the web: generic with GENERIC_SHARE, else a caption of the piece's attributes with
    each one wrong with WRONG_SHARE (a wrong value is any other of its field's values)."""
    if rng.random() < GENERIC_SHARE:
        return str(rng.choice(GENERIC_CAPTIONS))
    wrong = dict(a)
    for name, values in WRONG_VALUES.items():
        if rng.random() < WRONG_SHARE:
            others = [v for v in values if v != a[name]]
            wrong[name] = others[int(rng.integers(len(others)))]
    return caption_for(wrong, rng)


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
        lambda: f"{g} in {key}",
        lambda: f"{mood} {inst[0]} melody in {key}",
        lambda: f"{g} in {key}, {speed}, with {inst[0]}",
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


def render(pieces: list[Piece], codec, batch: int = 32, sample_rate: int | None = None):
    """Mono audio (len(pieces), samples) of equally long pieces through the score codec (a torch tensor), at
    `sample_rate` (default: the codec's). Through a SoundFont the pieces are what a listener of the app gets
    (`engine.service.takes_audio`: loudness-normalised), then mixed to mono; through the synthesiser they are its raw
    output, as the shipped E and scorers were trained. `codec` may be a list: batch j uses codec j mod len (e.g.
    one per SoundFont bank, so that what is learned holds for each)."""
    codecs = codec if isinstance(codec, list | tuple) else [codec]
    rate = sample_rate or codecs[0].sample_rate
    out = [_render_batch(pieces[j:j + batch], codecs[(j // batch) % len(codecs)], rate)
           for j in range(0, len(pieces), batch)]
    return torch.cat(out)


def _render_batch(pieces: list[Piece], codec, rate: int) -> torch.Tensor:
    from engine.service import takes_audio  # noqa: PLC0415 (the engine's serving side: only for this)

    codes = torch.as_tensor(np.stack([pc.codes for pc in pieces]).astype(np.int64))
    if getattr(codec, "renderer", "synth") == "soundfont":
        audio = torch.from_numpy(takes_audio(codec, codes).mean(axis=1))
    else:
        audio = codec.decode(codes)
    return AF.resample(audio, codec.sample_rate, rate) if rate != codec.sample_rate else audio


def codecs(renderer: str, soundfonts: str | None = None) -> list[ScoreCodec]:
    """The codecs a training run renders through: one, or one per bank of a comma-separated `soundfonts`."""
    banks = [b.strip() for b in (soundfonts or "").split(",") if b.strip()] or [None]
    if renderer != "soundfont":
        return [ScoreCodec(renderer=renderer)]
    return [ScoreCodec(renderer=renderer, soundfont=b) for b in banks]


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
    """The first n clean captions of the held-out split: the test prompts of the evaluation and of the trainer's
    eval (at most TEST_PROMPT_POOL of them)."""
    if n > TEST_PROMPT_POOL:
        raise ValueError(f"at most {TEST_PROMPT_POOL} test prompts (the rest of the held-out split validates)")
    return _clean_heldout(seed, frames)[:n]


def validation_prompts(seed: int, n: int, frames: int = 32) -> list[str]:
    """n clean held-out captions disjoint from the test prompts, by position and by text: for choices made by
    measurement (the CFG teacher), so that nothing reported on the test prompts was tuned on them."""
    test = set(_clean_heldout(seed, frames)[:TEST_PROMPT_POOL])
    out = [c for c in _clean_heldout(seed, frames, TEST_PROMPT_POOL + 4 * n)[TEST_PROMPT_POOL:] if c not in test]
    if len(out) < n:
        raise ValueError(f"only {len(out)} validation prompts with texts outside the test prompts")
    return out[:n]


def _clean_heldout(seed: int, frames: int, n: int = TEST_PROMPT_POOL) -> list[str]:
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
