"""Quality–diversity fronts: Pareto sets, the area a front dominates over a diversity interval, and a
prompt-level bootstrap for differences between fronts. Pure functions on (diversity, quality) points, both
to be maximised."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (no other point has ≥ diversity and ≥ quality, one strictly), by diversity."""
    pts = sorted({(float(x), float(y)) for x, y in points}, key=lambda p: (-p[0], -p[1]))
    front, best_y = [], -np.inf
    for x, y in pts:  # from the most diverse down: keep a point if it beats every more diverse one in quality
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def staircase(front: Sequence[tuple[float, float]], x: float) -> float:
    """Best quality reachable at diversity ≥ x on the front (-inf beyond its most diverse point)."""
    ys = [q for d, q in front if d >= x]
    return max(ys) if ys else -np.inf


def dominated_area(points: Sequence[tuple[float, float]], x_lo: float, x_hi: float, y_ref: float) -> float:
    """∫ from x_lo to x_hi of (staircase(x) − y_ref)⁺ dx: the area the points' front dominates above y_ref."""
    if x_hi <= x_lo:
        return 0.0
    front = pareto_front(points)
    cuts = sorted({x_lo, x_hi, *(d for d, _ in front if x_lo < d < x_hi)})
    area = 0.0
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        # staircase is constant on (a, b]: evaluate just right of a
        area += max(0.0, staircase(front, b) - y_ref) * (b - a)
    return area


def overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The diversity interval both point sets span."""
    return max(min(p[0] for p in a), min(p[0] for p in b)), min(max(p[0] for p in a), max(p[0] for p in b))


def area_difference(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]],
                    y_ref: float | None = None) -> dict:
    """Dominated area of front a minus front b over their diversity overlap (positive: a dominates more)."""
    lo, hi = overlap(a, b)
    if y_ref is None:
        y_ref = min(p[1] for p in [*a, *b])
    da, db = dominated_area(a, lo, hi, y_ref), dominated_area(b, lo, hi, y_ref)
    return dict(x_lo=lo, x_hi=hi, y_ref=y_ref, area_a=da, area_b=db, difference=da - db)


def bootstrap(stat: Callable[[np.ndarray], float], n_units: int, reps: int = 500, seed: int = 0,
              level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of stat(indices) over resamples of n_units units (prompts) with replacement."""
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n_units, n_units)) for _ in range(reps)])
    values = values[np.isfinite(values)]
    return float(np.quantile(values, (1 - level) / 2)), float(np.quantile(values, 1 - (1 - level) / 2))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):
            r[v == u] = r[v == u].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / √n); 0 for fewer than two values."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
