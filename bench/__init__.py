"""Benchmarks (README, "Benchmarks"): each writes its figures as JSON with `write_json`."""
from __future__ import annotations

import json
import math
from pathlib import Path


def _plain(value):
    """JSON has no NaN: a figure that could not be computed (e.g. an interval of one value) is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(results: dict, path: str | Path) -> Path:
    """Write a benchmark's results to `path` (its folder made if missing) and say so."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain(results), indent=2) + "\n")
    print(f"wrote {out}")
    return out
