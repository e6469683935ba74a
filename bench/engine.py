"""Engine benchmarks: our sampler vs transformers' generate, and merge latency vs the memory-bandwidth bound.

    python -m bench.engine                 # both model sizes (several minutes on 2 CPU cores)
    python -m bench.engine --sizes nano    # quick
    python -m bench.engine --dtype bf16    # bf16 weights on both sides (ours: fp32 activations, bf16 weights
                                           # widened in the matmuls)
    python -m bench.engine --isa avx2      # both sides as on a CPU without AVX-512

Sampler: the same random model, batch, length and sampling settings (top-k 250, temperature 1) through
(a) our `generate_codes` and (b) transformers' `MusicgenForConditionalGeneration.generate`, text encoding
included on both sides and the codec excluded on both (its `decode` is stubbed for (b)), without and with
CFG (γ = 3, unconditional negative: what transformers implements). Runs alternate between the two; the
median of --repeats runs after one warm-up is reported, with the ratio transformers / ours.

Merge: one λ change written into the serving weights, vs the bound 3 × decoder bytes / memcpy bandwidth
(read θ_q, read θ_d, write θ) where the bandwidth is measured in the same run as 2 × bytes / copy time.
Also against the obvious alternative: a state-dict of (1−λ)·θ_q + λ·θ_d loaded with `load_state_dict`.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import torch

from bench import write_json
from engine import kernels
from engine.generate import SamplingParams, generate_codes
from engine.merge import Blend, WeightMixer
from engine.model import debug_composite, from_composite, parse_dtype

NO_AVX512 = {"avx2": {"MUSIC_KERNEL_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                      "ONEDNN_MAX_CPU_ISA": "AVX2"}}  # each library's own switch down to AVX2 (+ FMA)
SIZES = {
    # ~9M-parameter decoder: the scale of the embedded nano model
    "nano": dict(hidden=256, layers=8, heads=8, vocab=512, codebooks=4, max_positions=1024),
    # facebook/musicgen-small's decoder shape (randomly initialised)
    "small": dict(hidden=1024, layers=24, heads=16, vocab=2048, codebooks=4, max_positions=2048),
}


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_sampler(comp, tokenizer, model, batch: int, frames: int, repeats: int) -> dict:
    prompt = "upbeat techno with a driving kick"
    K = model.decoder.num_codebooks
    params = SamplingParams(temperature=1.0, top_k=250)
    enc = tokenizer([prompt] * batch, return_tensors="pt")
    enc.pop("token_type_ids", None)
    comp.audio_encoder.decode = lambda codes, **kw: type("Out", (), {"audio_values": codes})()  # codec excluded

    def ours(cfg: bool):
        cond = model.encode_text([prompt])
        neg = model.encode_text([""]) if cfg else None
        generate_codes(model.decoder, cond, batch, frames, params, torch.Generator().manual_seed(0),
                       neg=neg, guidance=3.0 if cfg else None)

    def theirs(cfg: bool):
        with torch.no_grad():
            comp.generate(**enc, do_sample=True, top_k=250, temperature=1.0, max_new_tokens=frames + K - 1,
                          guidance_scale=3.0 if cfg else None)

    row = {"batch": batch, "frames": frames}
    for cfg in (False, True):
        key = "cfg" if cfg else "plain"
        t_ours, t_theirs = [], []
        ours(cfg), theirs(cfg)  # warm-up
        for _ in range(repeats):  # alternate, so that drift in machine load hits both sides
            for fn, times in ((ours, t_ours), (theirs, t_theirs)):
                t = time.perf_counter()
                fn(cfg)
                times.append(time.perf_counter() - t)
        row[f"{key}_ours_s"] = statistics.median(t_ours)
        row[f"{key}_transformers_s"] = statistics.median(t_theirs)
        row[f"{key}_speedup"] = row[f"{key}_transformers_s"] / row[f"{key}_ours_s"]
    del comp.audio_encoder.decode
    row["cfg_cost_ours"] = row["cfg_ours_s"] / row["plain_ours_s"]
    row["cfg_cost_transformers"] = row["cfg_transformers_s"] / row["plain_transformers_s"]
    row["ours_steps_per_s"] = (frames + K - 1) / row["plain_ours_s"]
    return row


def bench_merge(model, repeats: int) -> dict:
    decoder = model.decoder
    original = decoder.flat.clone()  # merging writes into the decoder: restore it at the end
    mixer = WeightMixer(decoder)
    names = list(mixer.reference)
    g = torch.Generator().manual_seed(0)
    q = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for n, p in mixer.reference.items()}
    d = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for n, p in mixer.reference.items()}
    mixer.add("q", q)
    mixer.add("d", d)
    nbytes = decoder.flat.numel() * decoder.flat.element_size()
    scratch = torch.empty_like(decoder.flat)
    copy_s = _median_time(functools.partial(scratch.copy_, mixer.endpoints["q"]), repeats)
    bandwidth = 2 * nbytes / copy_s  # bytes read + written per second
    bound_s = 3 * nbytes / bandwidth
    lams = iter([0.1 + 0.8 * i / (4 * repeats + 8) for i in range(4 * repeats + 8)])  # a new λ every time
    merge_s = _median_time(lambda: mixer.apply(Blend.lerp("q", "d", next(lams))), repeats)
    del scratch

    def naive():
        lam = next(lams)
        decoder.model.load_state_dict({n: (1 - lam) * q[n] + lam * d[n] for n in names})

    naive_s = _median_time(naive, max(1, repeats // 2))
    decoder.flat.copy_(original)
    return {"decoder_params": decoder.flat.numel(), "decoder_MB": nbytes / 1e6, "memcpy_GBps": bandwidth / 1e9,
            "bound_ms": bound_s * 1e3, "merge_ms": merge_s * 1e3, "merge_over_bound": merge_s / bound_s,
            "state_dict_merge_ms": naive_s * 1e3, "speedup_vs_state_dict": naive_s / merge_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nano-frames", type=int, default=250, help="5 s at 50 Hz")
    p.add_argument("--small-frames", type=int, default=50, help="1 s at 50 Hz")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="decoder weights on both sides; with bf16 transformers runs its whole composite in bf16 "
                        "(what from_pretrained(torch_dtype=torch.bfloat16) gives a user)")
    p.add_argument("--isa", choices=list(NO_AVX512), help="avx2: run everything (our kernels, torch's ATen, MKL, "
                   "oneDNN) as on a CPU without AVX-512, so one machine measures both (the run starts again with "
                   "the libraries' own switches set)")
    p.add_argument("--out", help="default: bench/results/engine.json (engine_bf16.json for --dtype bf16, "
                                 "engine_avx2.json for --isa avx2)")
    args = p.parse_args(argv)
    if args.isa and any(os.environ.get(k) != v for k, v in NO_AVX512[args.isa].items()):
        os.execve(sys.executable, [sys.executable, "-m", "bench.engine", *(argv or sys.argv[1:])],
                  os.environ | NO_AVX512[args.isa])
    suffix = "".join(f"_{v}" for v in (args.dtype if args.dtype != "fp32" else "", args.isa or "") if v)
    args.out = args.out or f"bench/results/engine{suffix}.json"
    dtype = parse_dtype(args.dtype)
    torch.set_num_threads(args.threads)

    results = {"torch": torch.__version__, "threads": args.threads, "dtype": args.dtype, "isa": args.isa or "native",
               "kernels": kernels.status(),
               "cpu": platform.processor() or platform.machine(), "sampler": [], "merge": {}}
    for size in args.sizes:
        t = time.perf_counter()
        comp, tokenizer = debug_composite(seed=0, **SIZES[size])
        model = from_composite(comp, tokenizer, size, dtype)
        comp.to(dtype)  # transformers' side: the whole composite in that dtype (our text encoder shares it)
        print(f"[{size}] built {model.decoder.flat.numel() / 1e6:.1f}M-parameter {args.dtype} decoder in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        frames = args.nano_frames if size == "nano" else args.small_frames
        for batch in ((1, 2, 4, 8) if size == "nano" else (1, 4)):
            row = {"size": size} | bench_sampler(comp, tokenizer, model, batch, frames, args.repeats)
            results["sampler"].append(row)
            print(f"[{size}] batch {batch}, {frames} frames: plain {row['plain_ours_s']:.2f} s vs transformers "
                  f"{row['plain_transformers_s']:.2f} s ({row['plain_speedup']:.2f}x); "
                  f"CFG {row['cfg_ours_s']:.2f} s vs "
                  f"{row['cfg_transformers_s']:.2f} s ({row['cfg_speedup']:.2f}x); CFG/plain ours "
                  f"{row['cfg_cost_ours']:.2f}, transformers {row['cfg_cost_transformers']:.2f}", flush=True)
        m = bench_merge(model, args.repeats * 2)
        results["merge"][size] = m
        print(f"[{size}] merge {m['merge_ms']:.2f} ms for {m['decoder_MB']:.0f} MB; bound {m['bound_ms']:.2f} ms at "
              f"{m['memcpy_GBps']:.1f} GB/s memcpy -> {m['merge_over_bound']:.2f}x the bound; state-dict merge "
              f"{m['state_dict_merge_ms']:.1f} ms ({m['speedup_vs_state_dict']:.1f}x slower)", flush=True)
        del comp, model
    write_json(results, args.out)


if __name__ == "__main__":
    main()
