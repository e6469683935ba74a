"""Whole-decode A/B of the CPU decode kernels: what decided `engine.decoder.linear` and the decode attention.

    python -m bench.decode_kernels            # nano and musicgen-small shapes, ~3 minutes on 2 cores

In one process, alternating, the same generation runs with
  (a) the decoder as it ships: the C kernels (`engine.kernels`) for a decode step's matmuls and attention;
  (b) torch's SDPA for attention instead of the C kernel;
  (c) the torch matmuls used without the C kernel (one padded `w @ xᵀ` block up to 4 rows, oneDNN in chunks of 8
      for 5-16 rows on AMD CPUs; `F.linear` elsewhere);
  (d) 4-row matmul blocks for every row count up to 16, the strategy before oneDNN (C attention).
Prints the median times and each variant's time over (a)'s.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import engine.decoder
import engine.kernels
from bench.engine import SIZES
from engine.generate import SamplingParams, generate_codes
from engine.model import debug_composite, from_composite

CASES = {"nano": [(8, None), (4, 3.0), (8, 3.0)], "small": [(4, 3.0)]}


def blocks_of_4(x: torch.Tensor, w: torch.Tensor, row_block: int = 0, c_kernel: bool = False,
                chunked: bool = False) -> torch.Tensor:
    """The earlier strategy: zero-padded blocks of `row_block` rows up to 4 blocks, `F.linear` beyond (`linear`'s
    signature; `c_kernel` and `chunked` are ignored)."""
    rows = x.numel() // x.shape[-1]
    if not row_block or rows > 4 * row_block:
        return F.linear(x, w)
    x2 = F.pad(x.reshape(rows, -1), (0, 0, 0, -rows % row_block))
    y = torch.cat([w @ x2[i:i + row_block].T for i in range(0, x2.shape[0], row_block)], dim=1)
    return y[:, :rows].T.contiguous().view(*x.shape[:-1], w.shape[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nano-frames", type=int, default=250)
    p.add_argument("--small-frames", type=int, default=30)
    args = p.parse_args(argv)
    params = SamplingParams(temperature=1.0, top_k=250)
    shipped = engine.decoder.linear, engine.decoder.decode_attention, engine.decoder.few_row_linear
    no_kernel = lambda *a, **kw: None  # noqa: E731 - the kernels' "does not apply" answer
    variants = {"decoder": shipped, "torch SDPA": (shipped[0], no_kernel, shipped[2]),
                "torch matmuls": (shipped[0], shipped[1], no_kernel),
                "4-row blocks": (blocks_of_4, shipped[1], no_kernel)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {engine.kernels.status()}")
    try:
        for size in args.sizes:
            comp, tokenizer = debug_composite(seed=0, **SIZES[size])
            model = from_composite(comp, tokenizer, size)
            cond, neg = model.encode_text(["upbeat techno"]), model.encode_text([""])
            frames = args.nano_frames if size == "nano" else args.small_frames
            for clips, gamma in CASES[size]:
                times = {k: [] for k in variants}
                for i in range(args.repeats + 1):  # the first round warms up
                    for name, (matmul, attention, few_rows) in variants.items():
                        engine.decoder.linear, engine.decoder.decode_attention = matmul, attention
                        engine.decoder.few_row_linear = few_rows
                        t = time.perf_counter()
                        generate_codes(model.decoder, cond, clips, frames, params, torch.Generator().manual_seed(0),
                                       neg=neg if gamma else None, guidance=gamma)
                        if i:
                            times[name].append(time.perf_counter() - t)
                med = {k: statistics.median(v) for k, v in times.items()}
                cfg = f" + CFG γ={gamma:g}" if gamma else ""
                others = ", ".join(f"{k} {v:.3f} s ({v / med['decoder']:.2f}x)"
                                   for k, v in med.items() if k != "decoder")
                print(f"[{size}] {clips} clips{cfg}, {frames} frames: decoder {med['decoder']:.3f} s, {others}",
                      flush=True)
    finally:
        engine.decoder.linear, engine.decoder.decode_attention, engine.decoder.few_row_linear = shipped


if __name__ == "__main__":
    main()
