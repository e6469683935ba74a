"""Where the shipped weights live, written once: the defaults of the app, the trainers, the evaluation and the tools.

Paths are relative to the repository root (the training commands run from it, and the model cards record them as
given); `local` resolves one against this checkout wherever the process was started from.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NANO = "weights/nano"  # the base: MusicGen-nano
THETA_Q = "weights/theta_q"  # the quality model (β = 0)
THETA_D = "weights/theta_d"  # the diversity model
THETA_B15 = "weights/theta_b15"  # the β = 15 model (the soup's third member)
EMBEDDING = "weights/embedding"  # E, the diversity embedding
QUALITY = "weights/quality"  # nano's learned quality scorer
EVAL = "weights/eval"  # the evaluation's report, fronts and cache
TEACHER = "weights/eval/teacher_sweep/teacher.json"  # the CFG teacher chosen by training.teacher_sweep
FRONTS = "weights/eval/fronts.json"  # the quality–diversity fronts the app draws


def local(path: str) -> str | None:
    """`path` (one of the above) in this checkout, as an absolute path; None when it is not there."""
    full = ROOT / path
    return str(full) if full.exists() else None


def is_shipped_nano(base: str) -> bool:
    """Whether `base` is this checkout's nano (then its θ_q, θ_d, E, scorers and teacher are the defaults)."""
    return base != "debug" and local(NANO) is not None and Path(base).resolve() == Path(local(NANO)).resolve()
