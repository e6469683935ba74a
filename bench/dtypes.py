"""Decoder weights in fp32, bf16 and int8 (`--dtype`), measured in one run: speed, error against fp32, and on the
shipped nano what a listener would notice.

    python -m bench.dtypes                  # nano and the musicgen-small shape (~4 minutes on 2 cores)
    python -m bench.dtypes --quick          # fewer repeats and clips: a smoke test

Speed: wall seconds per second of audio for one take (batch 1, no CFG, top-k 250, T = 1, text encoding included,
codec excluded: bench.engine's measure), the median of --repeats runs after a warm-up; each dtype is built from the
same random composite of bench.engine's shapes, and the runs alternate between dtypes so that drift in machine load
hits all three. Ratios int8 / bf16 and int8 / fp32.
Error: the logits of one teacher-forced forward over 2 × 64 random frames against fp32's: max |Δ| / max |logit| and
RMS(Δ) / RMS(logits).
nano (the shipped weights at λ = 0.5): greedy codes of 8 validation prompts × 4 s, the share of tokens equal to
fp32's; and exact quality (`engine.exact`) of 16 validation prompts × 4 takes × 4 s sampled at T = 1 with the same
seeds, each dtype's mean with a 95 % interval and the paired difference int8 − fp32 (validation prompts: nothing
reported elsewhere is measured on them).
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch

from bench import write_json
from bench.engine import SIZES
from engine import exact, kernels
from engine.generate import SamplingParams, generate_codes
from engine.model import debug_composite, from_composite, parse_dtype
from engine.service import MusicService, Request

DTYPES = ("fp32", "bf16", "int8")
FRAME_RATE = 50  # MusicGen's codes per second of audio


def speed(models: dict, frames: int, repeats: int) -> dict[str, float]:
    """Seconds per second of audio of one take, per dtype (runs alternate between dtypes)."""
    params, prompt = SamplingParams(temperature=1.0, top_k=250), "upbeat techno with a driving kick"

    def take(model):
        generate_codes(model.decoder, model.encode_text([prompt]), 1, frames, params, torch.Generator().manual_seed(0))

    times = {name: [] for name in models}
    for model in models.values():
        take(model)  # warm-up
    for _ in range(repeats):
        for name, model in models.items():
            t = time.perf_counter()
            take(model)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) / (frames / FRAME_RATE) for name, ts in times.items()}


@torch.no_grad()
def logit_error(models: dict, frames: int = 64) -> dict[str, dict[str, float]]:
    """Each dtype's teacher-forced logits against fp32's."""
    ref_model = models["fp32"]
    d = ref_model.decoder
    tokens = torch.randint(0, d.vocab_size, (2, d.num_codebooks, frames), generator=torch.Generator().manual_seed(1))
    cond = ref_model.encode_text(["calm piano with soft strings", "rock song with drums"])

    def logits(model):
        dec = model.decoder
        return dec.forward(tokens, 0, dec.new_state(cond.hidden, cond.mask, None)).float()

    ref = logits(ref_model)
    out = {}
    for name, model in models.items():
        delta = logits(model) - ref
        out[name] = dict(max_rel=float(delta.abs().max() / ref.abs().max()),
                         rms_rel=float(delta.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()))
    return out


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % interval (normal approximation)."""
    if len(values) < 2:
        return (values[0] if values else math.nan), math.nan
    return statistics.fmean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def nano_checks(prompts: int, takes: int, seconds: float) -> dict:
    """Greedy agreement and exact quality of the shipped nano at λ = 0.5, per dtype."""
    from training.corpus import validation_prompts  # noqa: PLC0415 (only this check needs the corpus)

    services = {name: MusicService.from_sources("weights/nano", "weights/theta_q", "weights/theta_d",
                                                dtype=name)[0] for name in DTYPES}
    greedy, quality = {}, {}
    for name, svc in services.items():
        codes = [svc.generate_merged(Request(p, 1, seconds, seed=0, temperature=0.0), 0.5).codes
                 for p in validation_prompts(0, 8)]
        greedy[name] = torch.cat(codes)
        scores = []
        for i, p in enumerate(validation_prompts(0, prompts)):
            gen = svc.generate_merged(Request(p, takes, seconds, seed=100 + i), 0.5)
            scores += [exact.score_clip(c, p).quality for c in gen.codes.numpy()]
        quality[name] = scores
    out = {"greedy_agreement": {n: float((g == greedy["fp32"]).float().mean()) for n, g in greedy.items()}}
    for name, scores in quality.items():
        kept = [s for s in scores if s is not None]
        out[f"exact_quality_{name}"] = dict(zip(("mean", "ci95"), mean_ci(kept)), n=len(kept))
    pairs = [a - b for a, b in zip(quality["int8"], quality["fp32"]) if a is not None and b is not None]
    out["exact_quality_int8_minus_fp32"] = dict(zip(("mean", "ci95"), mean_ci(pairs)), n=len(pairs))
    return out


def shapes(args) -> dict:
    results = {}
    for size in args.sizes:
        comp, tokenizer = debug_composite(seed=0, **SIZES[size])
        models = {name: from_composite(copy.deepcopy(comp), tokenizer, size, parse_dtype(name)) for name in DTYPES}
        frames = args.frames or (250 if size == "nano" else 50)
        row = {"frames": frames, "s_per_audio_s": speed(models, frames, args.repeats), "logits": logit_error(models)}
        s = row["s_per_audio_s"]
        row["int8_over_bf16"], row["int8_over_fp32"] = s["int8"] / s["bf16"], s["int8"] / s["fp32"]
        results[size] = row
        print(f"[{size}] s per s of audio: " + ", ".join(f"{n} {v:.3f}" for n, v in s.items())
              + f"; int8/bf16 {row['int8_over_bf16']:.2f}, int8/fp32 {row['int8_over_fp32']:.2f}; logit error "
              + ", ".join(f"{n} max {e['max_rel']:.2e} rms {e['rms_rel']:.2e}" for n, e in row["logits"].items()
                          if n != "fp32"), flush=True)
        del comp, models
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frames", type=int, help="codes per take (default: nano 250 = 5 s, small 50 = 1 s)")
    p.add_argument("--quick", action="store_true", help="1 repeat, 25 frames, 2 × 2 nano clips of 1 s")
    p.add_argument("--out", default="bench/results/dtypes.json")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.frames = 1, args.frames or 25
    if not kernels.has_few_row_linear():
        raise SystemExit(f"int8 needs the C matmul kernel, which does not run here: {kernels.status()}")
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "kernels": kernels.status(),
               "shapes": shapes(args)}
    nano = nano_checks(*((2, 2, 1.0) if args.quick else (16, 4, 4.0)))
    results["nano_lambda_0.5"] = nano
    q = {n: nano[f"exact_quality_{n}"] for n in DTYPES}
    print("[nano λ=0.5] greedy tokens equal to fp32's: " + ", ".join(f"{n} {v:.3f}" for n, v in
                                                                      nano["greedy_agreement"].items())
          + "; exact quality " + ", ".join(f"{n} {v['mean']:.3f} ± {v['ci95']:.3f}" for n, v in q.items())
          + f"; int8 − fp32 {nano['exact_quality_int8_minus_fp32']['mean']:+.3f} ± "
            f"{nano['exact_quality_int8_minus_fp32']['ci95']:.3f}", flush=True)
    write_json(results, args.out)


if __name__ == "__main__":
    main()
