"""Training curves from a CSV log to a PNG (drawn by `engine.figures.curves_plot`).

    python -m training.plot runs/nano/log.csv loss heldout_loss --out weights/nano/loss.png --log-y
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from engine.figures import curves_plot


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
    """Draw the curves (`engine.figures.curves_plot`) to a PNG file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    curves_plot(series, title, xlabel, log_y, size).save(out)
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
    plot(read_columns(args.csv, args.x, args.columns), args.out,
         args.title or Path(args.csv).parent.name, args.x, args.log_y)


if __name__ == "__main__":
    main()
