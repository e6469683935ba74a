"""Throughput of one distillation step on nano: where the time goes (issue target: 8 prompts × 4 samples ≤ 10 s).

Runs `--steps` steps of the real trainer's step (same `Distiller`, β > 0 so every phase runs) after one warm-up step
and reports the mean step time and the share of sampling, audio decoding, embedding with E, and the
teacher-forced forwards + backward + optimizer step. Reported with the number of torch threads used.

    python -m training.bench_distill --steps 5
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine import shipped
from engine.embedding import load_embedder
from engine.model import load_model
from training.corpus import training_prompts
from training.distill import DistillConfig, Distiller
from training.settings import parse, setting


@dataclass(frozen=True)
class BenchSettings:
    base: str = setting(shipped.NANO, "base model")
    embedding: str = setting(shipped.EMBEDDING, "E for the diversity reward")
    steps: int = setting(5, "timed steps (after one warm-up step)")


def main(argv=None) -> dict:
    # the trainer's objective settings; β > 0 by default here, so that every phase of a step runs and is timed
    cfg, args = parse([DistillConfig, BenchSettings], argv, description=__doc__,
                      defaults=dict(beta=15.0, beta_warmup=0))
    base = load_model(args.base)
    embedder = load_embedder(args.embedding)
    distiller = Distiller(base, cfg, embedder.embed)
    optimizer = torch.optim.AdamW(distiller.student_model.parameters(), lr=cfg.lr)
    prompts = training_prompts(0, 256)
    rows = []
    for step in range(args.steps + 1):
        rng = np.random.default_rng([0, step])
        batch = [prompts[i] for i in rng.choice(len(prompts), cfg.prompts, replace=False)]
        t0 = time.perf_counter()
        codes = distiller.sample(batch, torch.Generator().manual_seed(step))
        t1 = time.perf_counter()
        loss, _ = distiller.loss_on(codes, batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        timings = distiller.take_timings()
        decode, embed = timings["decode_s"], timings["embed_s"]
        if step:  # step 0 warms up
            rows.append(dict(sample=t1 - t0, decode=decode, embed=embed,
                             fwd_bwd=t2 - t1 - decode - embed, total=t2 - t0))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    result = dict(step_s=mean["total"], steps_per_s=1 / mean["total"], threads=torch.get_num_threads(),
                  batch=f"{cfg.prompts} prompts x {cfg.samples} samples x {cfg.seconds:g} s",
                  share={k: mean[k] / mean["total"] for k in ("sample", "decode", "embed", "fwd_bwd")},
                  seconds={k: mean[k] for k in ("sample", "decode", "embed", "fwd_bwd")})
    print(f"{result['batch']}, {result['threads']} threads: {mean['total']:.2f} s/step "
          f"({result['steps_per_s']:.3f} steps/s)")
    for k in ("sample", "decode", "embed", "fwd_bwd"):
        print(f"  {k:8s} {mean[k]:6.2f} s  {100 * mean[k] / mean['total']:5.1f} %")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
