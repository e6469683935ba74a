"""Training curves from a CSV log to a PNG, drawn with Pillow (no plotting library needed).

    python -m training.plot runs/nano/log.csv loss heldout_loss --out weights/nano/loss.png --log-y
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def read_columns(path: str | Path, x: str, ys: list[str]) -> dict[str, list[tuple[float, float]]]:
    """(x, y) points per column, skipping empty cells."""
    series = {y: [] for y in ys}
    with open(path) as f:
        for row in csv.DictReader(f):
            for y in ys:
                if row.get(y) not in (None, ""):
                    series[y].append((float(row[x]), float(row[y])))
    return series


def plot(series: dict[str, list[tuple[float, float]]], out: str | Path, title: str = "", xlabel: str = "step",
         log_y: bool = False, size: tuple[int, int] = (800, 450)) -> Path:
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
    sx = lambda v: left + (v - x0) / (x1 - x0) * (W - left - right)  # noqa: E731
    sy = lambda v: H - bottom - (fy(v) - y0) / (y1 - y0) * (H - top - bottom)  # noqa: E731
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
        color = COLORS[i % len(COLORS)]
        if len(s) > 1:
            d.line([(sx(x), sy(y)) for x, y in s], fill=color, width=2)
        for x, y in s if len(s) <= 40 else ():
            d.ellipse([sx(x) - 2, sy(y) - 2, sx(x) + 2, sy(y) + 2], fill=color)
        d.text((W - right - 150, top + 8 + 14 * i), name, fill=color)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("columns", nargs="+")
    p.add_argument("--x", default="step")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--log-y", action="store_true")
    args = p.parse_args(argv)
    plot(read_columns(args.csv, args.x, args.columns), args.out, args.title or Path(args.csv).parent.name, args.x, args.log_y)


if __name__ == "__main__":
    main()
