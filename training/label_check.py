"""The exact checks against labels written by hand, on generated clips (a check that passes a degenerate clip is a
bug: true corpus pieces alone cannot show it, since they are never degenerate).

`dump` samples clips from several ways of sampling nano (the base plainly, with the paper's CFG, with the melody-
silencing mask, with top-p) and writes them with a readable listing of their events to a JSON file whose `label`
fields are empty; a person fills them in from the listing (which parts play, the tempo, on the grid or not, in one
key or not, noise or not), never from the parser's output. `check` compares `engine.exact`'s reading of every
labelled clip with its labels and prints each check's accuracy.

    python -m training.label_check dump --model weights/nano --out runs/labels.json
    python -m training.label_check check training/data/labelled_clips.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from engine import exact, shipped
from engine.model import load_model
from engine.nano_world import KEYS
from engine.score_codec import STREAMS, parse_token
from engine.service import DEFAULT_NEGATIVE_PROMPT, MusicService, Request
from training.corpus import validation_prompts

# (label, request settings): the ways of sampling whose clips are labelled; the mask is the one that silenced v1
SETTINGS = {"base T=1": dict(), "paper CFG γ=3": dict(guidance=3.0, negative_prompt=DEFAULT_NEGATIVE_PROMPT),
            "mask α=0.1 γ=5": dict(guidance=5.0, negative_prompt="", plausibility=0.1),
            "top-p 0.9": dict(top_p=0.9)}
PITCH = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
FIELDS = ("lead", "bass", "harmony", "drums", "bpm", "on_grid", "one_key", "noise")


def listing(codes: np.ndarray) -> list[str]:
    """One line per stream: frame:event for every event (notes as pitch names, chords as root+quality, drums as
    voices), then the positions of NOISE/DISTORT tokens."""
    lines = []
    for k, name in enumerate(STREAMS):
        cells = []
        for f, t in enumerate(codes[k]):
            e = parse_token(name, int(t))
            if e is None:
                continue
            if name in ("lead", "bass"):
                cells.append(f"{f}:{PITCH[e.pitches[0] % 12]}{e.pitches[0] // 12 - 1}")
            elif name == "harmony":
                cells.append(f"{f}:{KEYS[e.chord[0]]}{e.chord[1]}")
            else:
                cells.append(f"{f}:{'+'.join(v.split()[0][:2] for v in e.voices)}")
        lines.append(f"{name:8s} " + " ".join(cells))
    noisy = np.flatnonzero(((codes == 2) | (codes == 3)).any(0))
    lines.append(f"noise    {' '.join(map(str, noisy)) or '-'}")
    return lines


def dump(model: str, out: str, per_setting: int, seconds: float) -> None:
    service = MusicService(load_model(model))
    prompts = validation_prompts(0, per_setting)
    clips = []
    for label, kw in SETTINGS.items():
        for i, prompt in enumerate(prompts):
            gen = service.generate_base(Request(prompt, num_clips=1, duration_s=seconds, seed=7000 + i, **kw))
            codes = gen.codes.numpy()[0]
            clips.append(dict(setting=label, prompt=prompt, seed=7000 + i, listing=listing(codes),
                              codes=codes.tolist(), label=dict.fromkeys(FIELDS)))
    Path(out).write_text(json.dumps(dict(model=model, seconds=seconds, clips=clips), indent=1))
    print(f"wrote {len(clips)} clips to {out}")


def parser_says(codes: np.ndarray) -> dict:
    r = exact.read(codes)
    parts = exact.clean_parts(r)
    return dict(**r.playing, bpm=None if r.onsets < exact.MIN_ONSETS else r.tempo_bpm, on_grid=parts["on_grid"],
                one_key=parts["in_key"], noise=r.noise_events > 0)


def check(path: str) -> dict:
    """Per field, the share of labelled clips where the parser agrees with the label; prints the disagreements."""
    data = json.loads(Path(path).read_text())
    agree = {f: [] for f in FIELDS}
    for i, clip in enumerate(data["clips"]):
        says = parser_says(np.asarray(clip["codes"]))
        for f in FIELDS:
            label = clip["label"][f]
            same = (label is None and says[f] is None) if f == "bpm" and label is None else (
                says[f] is not None and abs(says[f] - label) < 1 if f == "bpm" else says[f] == label)
            agree[f].append(bool(same))
            if not same:
                print(f"clip {i} ({clip['setting']}, {clip['prompt']!r}): {f} labelled {label}, parser {says[f]}")
    shares = {f: float(np.mean(v)) for f, v in agree.items()}
    print(" ".join(f"{f} {s:.2f}" for f, s in shares.items()), f"({len(data['clips'])} clips)")
    return shares


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--model", default=shipped.NANO)
    d.add_argument("--out", default="runs/labels.json")
    d.add_argument("--per-setting", type=int, default=10)
    d.add_argument("--seconds", type=float, default=4.0)
    c = sub.add_parser("check")
    c.add_argument("path")
    args = p.parse_args(argv)
    if args.command == "dump":
        dump(args.model, args.out, args.per_setting, args.seconds)
    else:
        check(args.path)


if __name__ == "__main__":
    main()
