"""Few-row fp32 matmul kernels on this CPU: why the decoder (`engine.decoder.linear`) runs a decode step's matmuls
through the C kernel (`engine.kernels.few_row_linear`) and, without it, up to 4 rows as one padded `w @ xᵀ` block
and more through oneDNN.

    python -m bench.matmul

For weight shapes of the nano and musicgen-small decoders, times `F.linear(x, w)` (MKL), `w @ xᵀ` on zero-padded
blocks of 4 rows, oneDNN's linear, the decoder's fallback without the C kernel (`linear(x, w, 4)`) and the C kernel
for 1..48 rows, cycling through distinct weights so that they stream from memory as in a decode step, and reports
the effective weight bandwidth (weight bytes / time).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from engine.decoder import _onednn_linear, linear
from engine.kernels import few_row_linear, has_few_row_linear

SHAPES = {"nano kvq (768×256)": (768, 256),
          "small fc1 (4096×1024)": (4096, 1024), "small heads (8192×1024)": (8192, 1024)}


def _time(fn, n: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def blocks_of_4(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = F.pad(x, (0, 0, 0, -x.shape[0] % 4))
    return torch.cat([w @ x[i:i + 4].T for i in range(0, x.shape[0], 4)], dim=1)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GB/s of weights streamed")
    dnn = _onednn_linear()
    kernels = {"F.linear": F.linear, "4-row blocks": blocks_of_4, "oneDNN": dnn,
               "fallback": lambda x, w: linear(x, w, 4),
               "C kernel": few_row_linear if has_few_row_linear() else None}
    kernels = {k: f for k, f in kernels.items() if f is not None}
    print(f"{'weight':26s}{'rows':>5s}" + "".join(f"{k + ' µs':>16s}{'GB/s':>7s}" for k in kernels))
    for name, (o, i) in SHAPES.items():
        count = max(4, int(64e6 // (o * i * 4)))  # ≥ 64 MB of distinct weights: larger than the caches
        weights = [torch.randn(o, i) for _ in range(count)]
        gb = o * i * 4 / 1e9
        for rows in (1, 2, 4, 8, 16, 32, 48):
            x = torch.randn(rows, i)
            it = iter(range(10**9))
            n = max(20, int(2e8 // (o * i)))
            line = f"{name:26s}{rows:5d}"
            for fn in kernels.values():
                t = _time(lambda fn=fn, x=x, it=it, ws=weights, c=count: fn(x, ws[next(it) % c]), n)
                line += f"{t * 1e6:16.0f}{gb / t:7.1f}"
            print(line)


if __name__ == "__main__":
    main()
