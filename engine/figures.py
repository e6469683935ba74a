"""Every figure of the project, drawn with Pillow (no plotting library): the pairwise-diversity heatmap of a set of
clips and the quality–diversity plane with precomputed fronts and the current points (the app), quality and
diversity along λ (the evaluation's Figure 4), and training curves (`training.plot`). Usable from notebooks."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))


_ASCII = str.maketrans({"γ": "gamma ", "α": "alpha ", "θ": "theta", "λ": "lambda", "β": "beta",
                        "↑": "^", "■": "#", "—": "-", "↔": "<->", "→": "->", "✓": "ok", "✗": "x",
                        "·": "*", "≥": ">=", "≤": "<=", "×": "x", "±": "+-"})
# a font with Greek and arrows where the system has one (Debian's fonts-dejavu-core; most Linux images and Spaces);
# else Pillow's own, which has neither and sets spaces too tight to read at this size: symbols are spelled out and
# spaces doubled
FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf",
              "/Library/Fonts/DejaVuSans.ttf", "C:/Windows/Fonts/DejaVuSans.ttf")
FONT_SIZE = 12


@functools.cache
def _font() -> tuple[ImageFont.FreeTypeFont, bool]:
    """(font, whether it draws Greek and arrows)."""
    for path in FONT_FILES:
        if Path(path).exists():
            return ImageFont.truetype(path, FONT_SIZE), True
    return ImageFont.load_default(FONT_SIZE), False


def _text(d: ImageDraw.ImageDraw, xy, text: str, **kw) -> None:
    """Text in the figure font; without a font that has them, Greek and arrows are spelled out."""
    font, full = _font()
    d.text(xy, text if full else text.translate(_ASCII).replace(" ", "  "), font=font, **kw)


def _width(d: ImageDraw.ImageDraw, text: str) -> int:
    font, full = _font()
    return int(d.textlength(text if full else text.translate(_ASCII).replace(" ", "  "), font=font))


def _ramp(v: float) -> tuple[int, int, int]:
    """0 → pale yellow, 1 → dark blue (a viridis-like ramp reversed: darker = more different)."""
    stops = np.array([(255, 255, 217), (127, 205, 187), (29, 145, 192), (37, 52, 148), (8, 29, 88)], dtype=float)
    x = float(np.clip(v, 0, 1)) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    return tuple(int(c) for c in stops[i] + (stops[i + 1] - stops[i]) * (x - i))


def diversity_heatmap(matrix, title: str = "", cell: int = 64) -> Image.Image:
    """The N×N r_D matrix as coloured cells with their values (rows and columns are take numbers), on one fixed
    colour scale from 0 (identical) to 1 (unrelated) and beyond (up to 2, opposite), with its colour bar, so that two
    sets' heatmaps compare at a glance. The title sits below a margin that Gradio's label badge may cover."""
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    vmax = max(1.0, float(m.max()))
    left, top, bar = 34, 44 if title else 28, 18
    words = [(0.0, "0 identical"), (1.0, "1 unrelated"), (2.0, "2 opposite")]
    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = left + n * cell + 10 + bar + 8 + max(_width(d, w) for _, w in words) + 8
    img = Image.new("RGB", (max(width, _width(d, title) + left + 8), top + 24 + n * cell + 12), "white")
    d = ImageDraw.Draw(img)
    if title:
        _text(d, (left, 24), title, fill="black")
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
    # the colour bar: 0 at the bottom, vmax at the top, the meaning of 0 and 1 (and 2) beside it
    x0, y0, y1 = left + n * cell + 10, top + 24, top + 24 + n * cell - 2
    for y in range(y0, y1 + 1):
        d.line([(x0, y), (x0 + bar, y)], fill=_ramp((y1 - y) / max(y1 - y0, 1)))
    for value, word in words:
        if value <= vmax:
            y = y1 - value / vmax * (y1 - y0)
            d.line([(x0 + bar, y), (x0 + bar + 3, y)], fill="black")
            _text(d, (x0 + bar + 5, y - 7), word, fill="black")
    return img


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 × 10^k apart) covering [lo, hi]."""
    span = (hi - lo) or 1.0
    raw = span / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= 0.7 * raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) + (1 if round(step / 10 ** math.floor(math.log10(step)), 3)
                                                         == 2.5 else 0)
    return f"{v:.{decimals}f}"


def quality_diversity_plot(fronts: dict[str, list[tuple[float, float]]], points: dict[str, tuple[float, float]],
                           size: tuple[int, int] = (720, 420), title: str = "quality vs diversity",
                           xlabel: str = "diversity (mean r_D)", note: str = "") -> Image.Image:
    """Fronts (name → [(diversity, quality), ...], drawn as lines) and points (name → (diversity, quality), markers),
    on round ticks, with the legend under the plot (as tall as it needs) and an optional note under the title."""
    W, H = size
    badge = 24  # the top-left corner a viewer's label may cover (Gradio's image label): text starts below it
    left, right, top, bottom = 60, 20, badge + (40 if note else 28), 44
    names = [f"- {n}" for n in fronts] + [f"# {n}" for n in points]
    img = Image.new("RGB", (W, H + 16 * len(names) + 8), "white")
    d = ImageDraw.Draw(img)
    xy = [p for f in fronts.values() for p in f] + list(points.values())
    if not xy:
        _text(d, (W // 3, H // 2), "no points yet", fill="black")
        return img
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    x0, x1, y0, y1 = min(xs) - 0.08 * dx, max(xs) + 0.08 * dx, min(ys) - 0.08 * dy, max(ys) + 0.08 * dy
    sx = lambda v: left + (v - x0) / (x1 - x0) * (W - left - right)
    sy = lambda v: H - bottom - (v - y0) / (y1 - y0) * (H - top - bottom)
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for ticks, axis in ((nice_ticks(x0, x1), "x"), (nice_ticks(y0, y1), "y")):
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        for v in ticks:
            if axis == "x":
                d.line([(sx(v), H - bottom), (sx(v), H - bottom + 4)], fill="black")
                _text(d, (sx(v) - 10, H - bottom + 6), _tick_label(v, step), fill="black")
            else:
                d.line([(left - 4, sy(v)), (left, sy(v))], fill="black")
                _text(d, (6, sy(v) - 6), _tick_label(v, step), fill="black")
    _text(d, (left + (W - left - right) // 2 - 60, H - 18), xlabel, fill="black")
    _text(d, (left, badge + 6), title + "  (↑ quality)", fill="black")
    if note:
        _text(d, (left, badge + 21), note, fill=(90, 90, 90))
    legend = H + 4
    for k, (name, front) in enumerate(fronts.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = list(front)  # in the order of the swept parameter (γ, T, λ), not sorted by diversity
        if len(pts) > 1:
            d.line([(sx(x), sy(y)) for x, y in pts], fill=color, width=2)
        for x, y in pts:
            d.ellipse([sx(x) - 2, sy(y) - 2, sx(x) + 2, sy(y) + 2], fill=color)
        _text(d, (left, legend), f"— {name}", fill=color)
        legend += 16
    for k, (name, (x, y)) in enumerate(points.items()):
        color = PALETTE[(k + len(fronts)) % len(PALETTE)]
        d.rectangle([sx(x) - 5, sy(y) - 5, sx(x) + 5, sy(y) + 5], outline="black", fill=color)
        short = name.split(" (")[0]  # the point's own name beside it ("θ_q ↔ θ_d λ=0.50"), the rest in the legend
        tx = sx(x) + 8 if sx(x) + 8 + _width(d, short) <= W - right else sx(x) - 8 - _width(d, short)
        _text(d, (tx, sy(y) - 7), short, fill=(60, 60, 60))
        _text(d, (left, legend), f"■ {name}", fill=color)
        legend += 16
    return img


def load_front_settings(path: str | Path) -> dict:
    """How the fronts were measured ({"prompts", "clips", "seconds"}; {} if the file does not say)."""
    path = Path(path)
    try:
        return dict(json.loads(path.read_text()).get("settings") or {}) if path.exists() else {}
    except (OSError, ValueError, AttributeError):
        return {}


def load_fronts(path: str | Path, key: str = "fronts") -> dict[str, list[tuple[float, float]]]:
    """Precomputed fronts from the evaluation (`training.evaluate`): {"fronts": {name: [[diversity, quality], ...]}},
    the learned scores' axes, and "fronts_exact", nano's exact axes (`key`). A missing file or key gives no fronts;
    a malformed file is an error naming the file."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text()).get(key, {})
        return {str(k): [(float(x), float(y)) for x, y in v] for k, v in data.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a fronts file ({e})") from None


def lambda_plot(lam, quality, diversity) -> Image.Image:
    """Figure 4: quality and diversity along λ (arrays in λ order), each normalised between the endpoints
    (quality: 1 at λ = 0, 0 at λ = 1; diversity: 0 at λ = 0, 1 at λ = 1), against the diagonals."""
    W, H, left, top, right, bottom = 640, 420, 60, 30, 170, 44
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    sx = lambda v: left + v * (W - left - right)
    sy = lambda v: H - bottom - (v + 0.2) / 1.4 * (H - top - bottom)
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    d.line([(sx(0), sy(1)), (sx(1), sy(0))], fill=(150, 150, 150), width=1)
    d.line([(sx(0), sy(0)), (sx(1), sy(1))], fill=(150, 150, 150), width=1)
    q, dv, lam = (np.asarray(v, dtype=float) for v in (quality, diversity, lam))
    qn = (q - q[-1]) / (q[0] - q[-1]) if q[0] != q[-1] else q * 0
    dn = (dv - dv[0]) / (dv[-1] - dv[0]) if dv[-1] != dv[0] else dv * 0
    for k, (name, ys) in enumerate((("quality (normalised)", qn), ("diversity (normalised)", dn))):
        color = PALETTE[k]
        d.line([(sx(x), sy(y)) for x, y in zip(lam, ys, strict=True)], fill=color, width=2)
        _text(d, (W - right + 10, top + 14 * k), name, fill=color)
    _text(d, (W - right + 10, top + 28), "diagonals: linear", fill=(120, 120, 120))
    for i in range(5):
        _text(d, (sx(i / 4) - 8, H - bottom + 6), f"{i / 4:g}", fill="black")
    _text(d, (left + 150, H - 18), "λ (0 = θ_q, 1 = θ_d)", fill="black")
    _text(d, (left, 8), "Figure 4: quality and diversity along λ", fill="black")
    return img


def curves_plot(series: dict[str, list[tuple[float, float]]], title: str = "", xlabel: str = "step",
                log_y: bool = False, size: tuple[int, int] = (800, 450)) -> Image.Image:
    """Training curves: name → [(x, y), ...], one line each (with markers up to 40 points), optional log y."""
    W, H = size
    left, right, top, bottom = 70, 20, 30, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("nothing to plot")
    fy = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(fy(p[1]) for p in pts), max(fy(p[1]) for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda v: left + (v - x0) / (x1 - x0) * (W - left - right)
    sy = lambda v: H - bottom - (fy(v) - y0) / (y1 - y0) * (H - top - bottom)
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(6):  # ticks
        xv = x0 + (x1 - x0) * i / 5
        yv = y0 + (y1 - y0) * i / 5
        d.text((sx(xv) - 12, H - bottom + 6), f"{xv:.0f}", fill="black")
        label = 10 ** yv if log_y else yv
        d.text((5, H - bottom - (yv - y0) / (y1 - y0) * (H - top - bottom) - 6), f"{label:.3g}", fill="black")
    d.text((W // 2 - 20, H - 20), xlabel, fill="black")
    d.text((left, 8), title, fill="black")
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % 4]
        if len(s) > 1:
            d.line([(sx(x), sy(y)) for x, y in s], fill=color, width=2)
        for x, y in s if len(s) <= 40 else ():
            d.ellipse([sx(x) - 2, sy(y) - 2, sx(x) + 2, sy(y) + 2], fill=color)
        d.text((W - right - 150, top + 8 + 14 * i), name, fill=color)
    return img
