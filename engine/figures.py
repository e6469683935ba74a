"""Small figures drawn with Pillow (no plotting library): the pairwise-diversity heatmap of a set of clips and the
quality–diversity plane with precomputed fronts and the current points. Used by the app; usable from notebooks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))


_ASCII = str.maketrans({"γ": "gamma ", "θ": "theta", "λ": "lambda", "β": "beta", "↑": "^", "■": "#", "—": "-",
                        "·": "*", "≥": ">=", "≤": "<=", "×": "x", "±": "+-"})


def _text(d: ImageDraw.ImageDraw, xy, text: str, **kw) -> None:
    """Pillow's built-in font has no Greek: spell symbols out so labels stay readable without a font file."""
    d.text(xy, text.translate(_ASCII), **kw)


def _ramp(v: float) -> tuple[int, int, int]:
    """0 → pale yellow, 1 → dark blue (a viridis-like ramp reversed: darker = more different)."""
    stops = np.array([(255, 255, 217), (127, 205, 187), (29, 145, 192), (37, 52, 148), (8, 29, 88)], dtype=float)
    x = float(np.clip(v, 0, 1)) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    return tuple(int(c) for c in stops[i] + (stops[i + 1] - stops[i]) * (x - i))


def diversity_heatmap(matrix, title: str = "", vmax: float | None = None, cell: int = 56) -> Image.Image:
    """The N×N r_D matrix as coloured cells with their values; rows and columns are clip numbers."""
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    vmax = vmax or max(float(m.max()), 1e-6)
    left, top = 34, 28 if title else 10
    img = Image.new("RGB", (left + n * cell + 10, top + 24 + n * cell + 10), "white")
    d = ImageDraw.Draw(img)
    if title:
        _text(d, (left, 6), title, fill="black")
    for i in range(n):
        _text(d, (left + i * cell + cell // 2 - 3, top + 6), str(i + 1), fill="black")
        _text(d, (12, top + 24 + i * cell + cell // 2 - 6), str(i + 1), fill="black")
        for j in range(n):
            x, y = left + j * cell, top + 24 + i * cell
            color = _ramp(m[i, j] / vmax)
            d.rectangle([x, y, x + cell - 2, y + cell - 2], fill=color)
            text = "" if i == j else f"{m[i, j]:.2f}"
            dark = sum(color) < 380
            _text(d, (x + cell // 2 - 12, y + cell // 2 - 6), text, fill="white" if dark else "black")
    return img


def quality_diversity_plot(fronts: dict[str, list[tuple[float, float]]], points: dict[str, tuple[float, float]],
                           size: tuple[int, int] = (640, 420), title: str = "quality vs diversity") -> Image.Image:
    """Fronts (name → [(diversity, quality), ...], drawn as lines) and points (name → (diversity, quality), markers)."""
    W, H = size
    left, right, top, bottom = 60, 170, 28, 44
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xy = [p for f in fronts.values() for p in f] + list(points.values())
    if not xy:
        _text(d, (W // 3, H // 2), "no points yet", fill="black")
        return img
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    x0, x1, y0, y1 = x0 - 0.08 * dx, x1 + 0.08 * dx, y0 - 0.08 * dy, y1 + 0.08 * dy
    sx = lambda v: left + (v - x0) / (x1 - x0) * (W - left - right)  # noqa: E731
    sy = lambda v: H - bottom - (v - y0) / (y1 - y0) * (H - top - bottom)  # noqa: E731
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        _text(d, (sx(xv) - 12, H - bottom + 6), f"{xv:.3g}", fill="black")
        _text(d, (6, sy(yv) - 6), f"{yv:.3g}", fill="black")
    _text(d, (left + (W - left - right) // 2 - 30, H - 18), "diversity (mean r_D)", fill="black")
    _text(d, (left, 8), title + "  (↑ quality)", fill="black")
    legend = 0
    for k, (name, front) in enumerate(fronts.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = list(front)  # in the order of the swept parameter (γ, T, λ), not sorted by diversity
        if len(pts) > 1:
            d.line([(sx(x), sy(y)) for x, y in pts], fill=color, width=2)
        for x, y in pts:
            d.ellipse([sx(x) - 2, sy(y) - 2, sx(x) + 2, sy(y) + 2], fill=color)
        _text(d, (W - right + 10, top + 14 * legend), f"— {name}", fill=color)
        legend += 1
    for k, (name, (x, y)) in enumerate(points.items()):
        color = PALETTE[(k + len(fronts)) % len(PALETTE)]
        d.rectangle([sx(x) - 5, sy(y) - 5, sx(x) + 5, sy(y) + 5], outline="black", fill=color)
        _text(d, (W - right + 10, top + 14 * legend), f"■ {name}", fill=color)
        legend += 1
    return img


def load_fronts(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Precomputed fronts from the evaluation (`training.evaluate`): {"fronts": {name: [[diversity, quality], ...]}}.
    A missing file gives no fronts; a malformed one is an error naming the file."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())["fronts"]
        return {str(k): [(float(x), float(y)) for x, y in v] for k, v in data.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a fronts file ({e})") from None
