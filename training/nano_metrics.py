"""Measure a MusicGen-nano model from its generated tokens (the score codec makes attributes readable).

For held-out captions that name an attribute (instrument, drums / no drums / kit, tempo, mode), the fraction of
generated clips that have it, without CFG and with CFG (γ = 3, negative prompt "Bad audio quality."). Each
parser is also run on the true held-out pieces, to show how reliable it is. Plus: the rate of degradation
tokens, seed diversity for one prompt, and text-to-waveform speed.

    python -m training.nano_metrics --model weights/nano --out weights/nano/metrics.json
"""
from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch

from engine.checkpoint import save_json
from engine.model import load_model
from engine.score_codec import DISTORT, FIRST_EVENT, HOLD, NOISE, STREAMS, TEMPOS, ScoreCodec, parse_token
from engine.service import MusicService, Request
from training.corpus import HELD_OUT_EVERY, generate_piece

KIT_WORDS = {"drum machine": "electronic", "dusty drums": "lofi"}
INSTRUMENT_WORDS = ("piano", "guitar", "organ", "saw lead", "square lead", "bells", "flute", "strings", "pad",
                    "electric bass", "synth bass", "upright bass", "sub bass")
# Krumhansl–Kessler key profiles
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def describe(codes: np.ndarray) -> dict:
    """Attributes read back from one clip's tokens (4, T)."""
    events = {name: [(f, parse_token(name, t)) for f, t in enumerate(codes[k]) if t >= FIRST_EVENT]
              for k, name in enumerate(STREAMS)}
    events = {k: [(f, e) for f, e in v if e is not None] for k, v in events.items()}
    instruments = {e.instrument for k in ("lead", "bass", "harmony") for _, e in events[k]}
    kits = {e.instrument for _, e in events["drums"]}
    onsets = sorted({f for v in events.values() for f, _ in v})
    tempo = None
    if len(onsets) >= 8:  # the coarsest 16th grid that (almost) all onsets sit on
        aligned = {d: np.mean([f % d == 0 for f in onsets]) for d in TEMPOS}
        tempo = TEMPOS[max(d for d, a in aligned.items() if a >= 0.95)] if max(aligned.values()) >= 0.95 else None
    hist = np.zeros(12)  # pitch classes weighted by how long they sound
    for k, name in enumerate(STREAMS[:3]):
        for start, end, token in ScoreCodec._notes(codes[k]):
            e = parse_token(name, token)
            for p in e.pitches if e is not None else ():
                hist[p % 12] += end - start
    mode = None
    if hist.sum() >= 8:
        scores = [(np.corrcoef(np.roll(prof, key), hist)[0, 1], name) for key in range(12)
                  for prof, name in ((MAJOR_PROFILE, "major"), (MINOR_PROFILE, "minor"))]
        mode = max(scores)[1]
    degraded = bool(((codes == NOISE) | (codes == DISTORT)).any())
    return dict(instruments=instruments, kits=kits, drums=bool(events["drums"]), tempo=tempo,
                mode=mode, degraded=degraded)


def claims(caption: str) -> dict:
    """Attributes a caption asks for, as checks on `describe` output."""
    c = caption.lower()
    out = {}
    for word, kit in KIT_WORDS.items():
        if word in c:
            out["drum kit"] = lambda d, kit=kit: kit in d["kits"]
    if "no drums" in c:
        out["no drums"] = lambda d: not d["drums"]
    elif re.search(r"\bdrums\b", c) and "drum kit" not in out:
        out["drums"] = lambda d: d["drums"]
    named = tuple(w for w in INSTRUMENT_WORDS if re.search(rf"\b{w}\b", c))
    if named:
        out["instrument"] = lambda d: all(n in d["instruments"] for n in named)
    m = re.search(r"(\d+(?:\.\d)?) bpm", c)
    if m:
        bpm = float(m.group(1))
        out["tempo"] = lambda d: d["tempo"] is not None and abs(d["tempo"] - bpm) < 1
    elif re.search(r"\bfast\b", c):
        out["tempo"] = lambda d: d["tempo"] is not None and d["tempo"] >= 120
    elif re.search(r"\bslow\b", c):
        out["tempo"] = lambda d: d["tempo"] is not None and d["tempo"] <= 80
    if " major" in c:
        out["mode"] = lambda d: d["mode"] == "major"
    elif " minor" in c or " dorian" in c:
        out["mode"] = lambda d: d["mode"] == "minor"
    return out


def edit_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised Hamming distance between two token grids (4, T) of equal shape."""
    return float((a != b).mean())


def event_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Hamming distance over the positions where either grid has something other than HOLD (note-ons,
    rests, drum hits): sustain tokens shared by any two clips do not dilute it."""
    active = (a != HOLD) | (b != HOLD)
    return float((a != b)[active].mean()) if active.any() else 0.0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="weights/nano")
    p.add_argument("--seed", type=int, default=0, help="corpus seed of the held-out captions")
    p.add_argument("--prompts", type=int, default=48, help="held-out clean captions to prompt with")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    service = MusicService(load_model(args.model))
    frames = int(args.seconds * service.model.frame_rate)

    pieces, i = [], 0
    while len(pieces) < args.prompts:
        piece = generate_piece(args.seed, i, frames)
        if not piece.attributes["degraded"]:
            pieces.append(piece)
        i += HELD_OUT_EVERY
    results = {}
    for label, guidance in (("no CFG", 1.0), ("CFG γ=3", 3.0), ("corpus (parser check)", None)):
        hits, degraded, n_clips = {}, 0, 0
        for j, piece in enumerate(pieces):
            if guidance is None:
                clips = [piece.codes]
            else:
                req = Request(piece.caption, num_clips=args.clips, duration_s=args.seconds, seed=j, guidance=guidance)
                clips = service.generate_base(req).codes.numpy()
            for codes in clips:
                d = describe(codes)
                n_clips += 1
                degraded += d["degraded"]
                for name, check in claims(piece.caption).items():
                    hits.setdefault(name, []).append(bool(check(d)))
        results[label] = dict(adherence={k: (float(np.mean(v)), len(v)) for k, v in sorted(hits.items())},
                              degradation_rate=degraded / n_clips, clips=n_clips)

    # diversity sanity: one prompt, different seeds
    gen = service.generate_base(Request("Rock song.", num_clips=8, duration_s=args.seconds, seed=123)).codes.numpy()
    dists = [edit_distance(gen[a], gen[b]) for a in range(len(gen)) for b in range(a + 1, len(gen))]
    same = service.generate_base(Request("Rock song.", num_clips=8, duration_s=args.seconds, seed=123)).codes.numpy()
    events = [event_distance(gen[a], gen[b]) for a in range(len(gen)) for b in range(a + 1, len(gen))]
    rock = [pc.codes for pc in (generate_piece(args.seed, i, frames) for i in range(400))
            if pc.attributes["genre"] == "rock" and not pc.attributes["degraded"]][:8]
    ref = [event_distance(rock[a], rock[b]) for a in range(len(rock)) for b in range(a + 1, len(rock))]
    results["seed diversity"] = dict(mean_token_distance=float(np.mean(dists)), min=float(np.min(dists)),
                                     mean_event_distance=float(np.mean(events)),
                                     min_event_distance=float(np.min(events)),
                                     corpus_rock_event_distance=float(np.mean(ref)),
                                     same_seed_distance=edit_distance(gen[0], same[0]))
    # speed: 4 clips x 8 s, text -> waveform
    times = []
    for s in range(3):
        t = time.perf_counter()
        service.generate_base(Request("calm piano with soft strings", num_clips=4, duration_s=8.0, seed=s))
        times.append(time.perf_counter() - t)
    results["speed"] = dict(clips=4, seconds=8.0, wall_s_median=float(np.median(times)))
    # codec: decode speed on one core, on corpus pieces
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    codes = torch.as_tensor(np.stack([pc.codes for pc in pieces[:8]]).astype(np.int64))
    t = time.perf_counter()
    service.model.codec.decode(codes)
    results["codec"] = dict(real_time_factor_one_core=len(codes) * args.seconds / (time.perf_counter() - t))
    torch.set_num_threads(threads)

    print(f"{'':24s}" + "".join(f"{k:>22s}" for k in ("no CFG", "CFG γ=3", "corpus (parser check)")))
    names = sorted({n for k in ("no CFG", "CFG γ=3") for n in results[k]["adherence"]})
    for n in names:
        row = [results[k]["adherence"].get(n, (float("nan"), 0))
               for k in ("no CFG", "CFG γ=3", "corpus (parser check)")]
        print(f"{n:24s}" + "".join(f"{v:>15.3f} (n={c:3d})" for v, c in row))
    print(f"{'degradation rate':24s}" + "".join(f"{results[k]['degradation_rate']:>22.3f}"
                                                for k in ("no CFG", "CFG γ=3", "corpus (parser check)")))
    print(json.dumps({k: results[k] for k in ("seed diversity", "speed", "codec")}))
    if args.out:
        save_json(dict(results, model=args.model, prompts=args.prompts, clips=args.clips), args.out)


if __name__ == "__main__":
    main()
