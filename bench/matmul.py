"""Few-row matmul kernels on this CPU: why the decoder feeds its matmuls in 4-row blocks (decoder.cpu_row_block).

    python -m bench.matmul

For weight shapes of the nano and musicgen-small decoders, times `F.linear(x, w)` and our blocked
`linear(x, w, 4)` for 1..16 rows, cycling through distinct weights so that they stream from memory as in a
decode step, and reports the effective weight bandwidth (weight bytes / time).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from engine.decoder import linear

SHAPES = {"nano kvq (768×256)": (768, 256), "small fc1 (4096×1024)": (4096, 1024), "small heads (8192×1024)": (8192, 1024)}


def _time(fn, n: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'weight':26s}{'rows':>5s}{'F.linear µs':>13s}{'GB/s':>7s}{'4-row blocks µs':>17s}{'GB/s':>7s}")
    for name, (o, i) in SHAPES.items():
        count = max(4, int(64e6 // (o * i * 4)))  # ≥ 64 MB of distinct weights: larger than the caches
        weights = [torch.randn(o, i) for _ in range(count)]
        gb = o * i * 4 / 1e9
        for rows in (1, 2, 4, 8, 16):
            x = torch.randn(rows, i)
            it = iter(range(10**9))
            n = max(20, int(2e8 // (o * i)))
            a = _time(lambda: F.linear(x, weights[next(it) % count]), n)
            b = _time(lambda: linear(x, weights[next(it) % count], 4), n)
            print(f"{name:26s}{rows:5d}{a * 1e6:13.0f}{gb / a:7.1f}{b * 1e6:17.0f}{gb / b:7.1f}")


if __name__ == "__main__":
    main()
