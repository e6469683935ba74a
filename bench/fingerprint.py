"""Fingerprints of what the shipped models make, to show that a refactor changed no behaviour.

    python -m bench.fingerprint --out runs/fingerprint-before.json          # on the old commit
    python -m bench.fingerprint --compare runs/fingerprint-before.json      # on the new one: exit 1 on any change

For a few prompts, each way of sampling the app offers (the base, the base with the chosen teacher's CFG and with
the paper's, θ_q ↔ θ_d at λ = 0, 0.5, 1, θ_q ↔ base at λ = 0.5, the uniform soup) makes greedy clips (temperature 0)
and seeded sampled clips; the fingerprint is the SHA-256 of their codes and audio, with their learned scores and
nano's exact scores rounded to 6 digits. Only stable engine APIs are used (`MusicService`, `Request`, `Blend`), so
the same file runs on both commits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from engine import exact
from engine.merge import Blend
from engine.scorers import Scorers
from engine.service import MusicService, Request

PROMPTS = ["Rock song.", "calm piano", "jazz trio, walking bass, brushed drums", "sad hip hop beat with piano"]
WEIGHTS = Path("weights")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _ways(service: MusicService, teacher: dict) -> dict:
    """name -> (sample(request), request overrides)."""
    blend = lambda b: (lambda req: service.generate_merged(req, b))  # noqa: E731
    cfg = dict(guidance=teacher["guidance"], negative_prompt=teacher["negative_prompt"],
               plausibility=teacher["plausibility"], top_p=teacher.get("top_p", 0.0))
    return {"base": (service.generate_base, {}), "teacher": (service.generate_base, cfg),
            "paper CFG": (service.generate_base, dict(guidance=3.0)),
            **{f"q-d {lam:g}": (blend(Blend.lerp("q", "d", lam)), {}) for lam in (0.0, 0.5, 1.0)},
            "q-base 0.5": (blend(Blend.lerp("q", "base", 0.5)), {}),
            "soup": (blend(Blend.soup(["q", "d", "soup0"])), {})}


def fingerprint(seconds: float, clips: int) -> dict:
    service, _ = MusicService.from_sources(str(WEIGHTS / "nano"), str(WEIGHTS / "theta_q"), str(WEIGHTS / "theta_d"))
    service.add_checkpoint("soup0", str(WEIGHTS / "theta_b15"))
    scorers = Scorers.from_folders(str(WEIGHTS / "embedding"), str(WEIGHTS / "quality"))
    teacher = json.loads((WEIGHTS / "eval" / "teacher_sweep" / "teacher.json").read_text())
    out = {}
    for name, (sample, cfg) in _ways(service, teacher).items():
        for temperature, seed in ((0.0, 0), (1.0, 7)):
            for i, prompt in enumerate(PROMPTS):
                gen = sample(Request(prompt, clips, seconds, seed=seed + i, temperature=temperature, **cfg))
                codes = gen.codes.numpy()
                s = scorers.score(gen.audio, gen.sample_rate, prompt)
                out[f"{name} | T={temperature:g} | {prompt}"] = dict(
                    codes=_digest(codes), audio=_digest(gen.audio),
                    quality=[round(float(x), 6) for x in s.quality], diversity=round(float(s.mean_diversity), 6),
                    exact=[exact.score_clip(c, prompt).quality for c in codes],
                    event_diversity=round(float(exact.event_diversity(codes)), 6))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the fingerprint here (JSON)")
    p.add_argument("--compare", help="a fingerprint to compare with: every entry must be identical")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--clips", type=int, default=2)
    args = p.parse_args(argv)
    now = fingerprint(args.seconds, args.clips)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(now, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        same = len(now) - len(changed)
        print(f"{same} of {len(now)} entries identical" + (f"; changed: {changed}" if changed else ""))
        sys.exit(1 if changed else 0)
    print(f"{len(now)} entries" + (f" written to {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
