"""The GPU check for a real MusicGen, ready to run on a CUDA machine with no hub access (< 8 minutes).

    bash bench/gpu_check.sh               # = python -m bench.gpu_check: CUDA, musicgen-small's shapes
    bash bench/gpu_check.sh --dry-run     # CPU, tiny shapes, seconds: every code path, what CI runs

Builds a random model with facebook/musicgen-small's shapes (decoder 1024 wide × 24 layers × 16 heads over 4 × 2048
codes; EnCodec at 32 kHz / 50 Hz; a BERT text encoder of T5-base's width standing in for T5, whose tokenizer needs
the hub) and measures, printing each line as it goes:

1. **sampler**: our `generate_codes` against transformers' `MusicgenForConditionalGeneration.generate` on the same
   model, plain and with CFG (γ = 3), batch 1 / 4 / 8, fp16 and bf16 weights (transformers: the whole composite in
   that dtype), the codec excluded on both sides: median seconds, the ratio transformers / ours, peak GPU memory;
2. **merge**: one λ change written into the serving weights, against the bound 3 × bytes / copy bandwidth;
3. **recipe stages**: `--steps` optimizer steps of the trainer's step (`training.distill.Distiller`, the code the
   recipe runs) for distillation (β = 0) and RL (β = 15, E: a random tower of the paper's shape), fp32 weights
   under bf16 autocast where the GPU has it: seconds per step and peak memory.

Writes bench/results/gpu_check.json (--out). The dry run uses the same code with tiny shapes on the CPU, fp32 only,
so CI proves the script runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM, MusicgenForConditionalGeneration

from bench import write_json
from bench.engine import bench_merge
from engine.embedding import AudioEmbedder, EmbeddingConfig
from engine.generate import SamplingParams, generate_codes
from engine.model import debug_composite, from_composite
from training.distill import DistillConfig, Distiller

PROMPTS = ["upbeat techno with a driving kick", "calm piano with soft strings", "jazz trio, walking bass",
           "epic orchestral trailer music"]


@dataclass(frozen=True)
class Shape:
    """A MusicGen's shapes: decoder, text encoder, codec."""

    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    vocab: int = 2048
    codebooks: int = 4
    max_positions: int = 2048
    text_hidden: int = 768
    text_layers: int = 12
    codec_rate: int = 32000
    codec_ratios: tuple[int, ...] = (8, 5, 4, 4)  # 32 kHz / 640 = 50 Hz frames
    codec_filters: int = 64
    codec_hidden: int = 128


SMALL = Shape()
MEDIUM = Shape(hidden=1536, layers=48, heads=24)  # facebook/musicgen-medium's decoder
TINY = Shape(hidden=64, layers=2, heads=4, vocab=64, max_positions=512, text_hidden=32, text_layers=1,
             codec_rate=8000, codec_ratios=(8, 5, 4), codec_filters=4, codec_hidden=16)


def build(shape: Shape, seed: int = 0) -> tuple[MusicgenForConditionalGeneration, object]:
    """A random composite MusicGen with these shapes (`engine.model.debug_composite`; nothing downloaded)."""
    return debug_composite(seed, shape.hidden, shape.layers, shape.heads, shape.vocab, shape.codebooks,
                           shape.max_positions,
                           text=dict(hidden_size=shape.text_hidden, num_hidden_layers=shape.text_layers,
                                     num_attention_heads=max(shape.text_hidden // 64, 2),
                                     intermediate_size=4 * shape.text_hidden),
                           audio=dict(sampling_rate=shape.codec_rate, upsampling_ratios=list(shape.codec_ratios),
                                      hidden_size=shape.codec_hidden, num_filters=shape.codec_filters,
                                      num_lstm_layers=2, codebook_dim=shape.codec_hidden, target_bandwidths=[2.2]))


def decoder_parameters(shape: Shape) -> int:
    """The decoder's parameter count, on PyTorch's meta device (no memory, no time)."""
    config = MusicgenDecoderConfig(vocab_size=shape.vocab, num_codebooks=shape.codebooks, hidden_size=shape.hidden,
                                   num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                                   ffn_dim=4 * shape.hidden, max_position_embeddings=shape.max_positions)
    with torch.device("meta"):
        return sum(p.numel() for p in MusicgenForCausalLM(config).parameters())


# ---------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Median seconds over `repeats` runs after one warm-up, and the peak memory in GB: the GPU's allocations, or on
    a CPU the process's peak resident memory so far."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    return statistics.median(times), peak


def sampler_rows(shape: Shape, dtype: torch.dtype, device: torch.device, batches, frames: int, repeats: int):
    """Ours vs transformers generate, plain and CFG, for each batch size."""
    comp, tokenizer = build(shape)
    model = from_composite(comp, tokenizer, "musicgen-small-shaped", dtype, device)
    comp.to(device=device, dtype=dtype)
    comp.audio_encoder.decode = lambda codes, **kw: type("Out", (), {"audio_values": codes})()  # codec excluded
    K, params = shape.codebooks, SamplingParams(temperature=1.0, top_k=250)
    prompt = PROMPTS[0]
    for batch in batches:
        enc = {k: v.to(device) for k, v in tokenizer([prompt] * batch, return_tensors="pt").items()
               if k != "token_type_ids"}
        for cfg in (False, True):
            def ours(cfg=cfg, batch=batch):
                cond = model.encode_text([prompt])
                neg = model.encode_text([""]) if cfg else None
                generate_codes(model.decoder, cond, batch, frames, params,
                               torch.Generator(device=device).manual_seed(0), neg=neg, guidance=3.0 if cfg else None)

            def theirs(cfg=cfg, enc=enc):
                with torch.no_grad():
                    comp.generate(**enc, do_sample=True, top_k=250, temperature=1.0, max_new_tokens=frames + K - 1,
                                  guidance_scale=3.0 if cfg else None)

            (t_ours, m_ours), (t_theirs, m_theirs) = timed(ours, device, repeats), timed(theirs, device, repeats)
            yield dict(dtype=str(dtype).split(".")[-1], batch=batch, cfg=cfg, frames=frames, ours_s=t_ours,
                       transformers_s=t_theirs, ratio=t_theirs / t_ours, ours_peak_GB=m_ours,
                       transformers_peak_GB=m_theirs)
    del comp.audio_encoder.decode
    yield dict(merge=bench_merge(model, repeats * 2), dtype=str(dtype).split(".")[-1])


def stage_rows(shape: Shape, device: torch.device, steps: int, seconds: float, prompts: int, samples: int):
    """Optimizer steps of the trainer's step for the recipe's two stages: distillation (β = 0) and RL (β = 15)."""
    comp, tokenizer = build(shape)
    base = from_composite(comp, tokenizer, "musicgen-small-shaped", torch.float32, device)
    embedder = AudioEmbedder(EmbeddingConfig()).to(device).eval()  # the paper's E shape, random weights
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for stage, beta in (("distillation", 0.0), ("RL", 15.0)):
        cfg = DistillConfig(beta=beta, beta_warmup=0, prompts=prompts, samples=samples, seconds=seconds)
        distiller = Distiller(base, cfg, embedder.embed)
        optimizer = torch.optim.AdamW(distiller.student_model.parameters(), lr=cfg.lr)
        step_no = iter(range(10**6))

        def step(distiller=distiller, optimizer=optimizer, step_no=step_no):
            i = next(step_no)
            batch = [PROMPTS[(i + j) % len(PROMPTS)] for j in range(prompts)]
            with autocast:
                loss, _ = distiller.step_loss(batch, i, torch.Generator(device=device).manual_seed(i))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds_per_step, peak = timed(step, device, steps)
        yield dict(stage=stage, beta=beta, batch=f"{prompts} prompts x {samples} samples x {seconds:g} s",
                   step_s=seconds_per_step, peak_GB=peak, autocast="bf16" if bf16 else "none")
        del distiller, optimizer


def fmt(row: dict) -> str:
    if "merge" in row:
        m = row["merge"]
        return (f"merge ({row['dtype']}): {m['merge_ms']:.2f} ms for {m['decoder_MB']:.0f} MB; bound "
                f"{m['bound_ms']:.2f} ms -> {m['merge_over_bound']:.2f}x the bound")
    if "stage" in row:
        peak = f", peak {row['peak_GB']:.1f} GB" if row["peak_GB"] is not None else ""
        return f"{row['stage']} (β = {row['beta']:g}, {row['batch']}, autocast {row['autocast']}): " \
               f"{row['step_s']:.2f} s/step{peak}"
    peak = (f"; peak {row['ours_peak_GB']:.2f} vs {row['transformers_peak_GB']:.2f} GB"
            if row["ours_peak_GB"] is not None else "")
    return (f"sampler {row['dtype']} batch {row['batch']} {'CFG ' if row['cfg'] else 'plain'}: ours "
            f"{row['ours_s']:.2f} s vs transformers {row['transformers_s']:.2f} s ({row['ratio']:.2f}x){peak}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, fp32: every code path in seconds")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--frames", type=int, default=150, help="frames per clip in the sampler runs (150 = 3 s)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per recipe stage")
    p.add_argument("--stages-only", action="store_true", help="skip the sampler and merge rows")
    p.add_argument("--stage-batch", nargs=3, type=float, metavar=("PROMPTS", "SAMPLES", "SECONDS"),
                   help="the recipe stages' micro-batch (default: 8 4 5 on a GPU, 2 3 0.2 in the dry run)")
    p.add_argument("--cpu-small", action="store_true",
                   help="musicgen-small's shapes on this CPU in fp32 (for the sizing's measured per-step figures)")
    p.add_argument("--count", action="store_true", help="print the decoder sizes of musicgen-small and -medium, exit")
    p.add_argument("--out", default="bench/results/gpu_check.json")
    args = p.parse_args(argv)
    if args.count:
        for name, shape in (("small", SMALL), ("medium", MEDIUM)):
            n = decoder_parameters(shape)
            print(f"musicgen-{name} decoder: {n / 1e9:.3f} B parameters, {4 * n / 1e9:.2f} GB in fp32, "
                  f"{2 * n / 1e9:.2f} GB in fp16")
        return {}
    if not (args.dry_run or args.cpu_small) and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --dry-run (CPU, tiny shapes) or on a GPU machine")
    device = torch.device("cpu" if args.dry_run or args.cpu_small else "cuda")
    shape = TINY if args.dry_run else SMALL
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float16, torch.bfloat16]
    frames, steps, repeats = (8, 2, 1) if args.dry_run else (args.frames, args.steps, args.repeats)
    prompts, samples, seconds = args.stage_batch or ((2, 3, 0.2) if args.dry_run else (8, 4, 5.0))
    t0 = time.perf_counter()
    result = dict(device=torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
                  torch=torch.__version__, dry_run=args.dry_run, shape=asdict(shape), rows=[])
    print(f"gpu_check on {result['device']} ({'dry run, tiny shapes' if args.dry_run else 'musicgen-small shapes'})",
          flush=True)
    for dtype in [] if args.stages_only else dtypes:
        for row in sampler_rows(shape, dtype, device, (1, 4, 8), frames, repeats):
            result["rows"].append(row)
            print(fmt(row), flush=True)
    for row in stage_rows(shape, device, steps, seconds=float(seconds), prompts=int(prompts), samples=int(samples)):
        result["rows"].append(row)
        print(fmt(row), flush=True)
    result["wall_s"] = time.perf_counter() - t0
    print(f"done in {result['wall_s'] / 60:.1f} min", flush=True)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
