"""How much signal a batch's gradient carries: the REINFORCE diversity term against the KL distillation term.

For `--batches` independent batches (same weights; other prompts and samples each time) it takes the gradient of
the KL term and of the REINFORCE term (β = 1) separately and reports their norms and the mean cosine between the
batches' gradients. If batch k's gradient is g_k = s + n_k (signal plus independent noise), then
E[cos(g_i, g_j)] ≈ |s|² / (|s|² + E|n|²): the share of one batch's squared gradient that is signal, and about
(1 − c) / c batches must be averaged before the signal is as large as the noise. This is what decides how many
samples the diversity RL needs before it moves the policy (the KL term is far less noisy).

    python -m training.grad_snr --batches 4                         # at the base model
    python -m training.grad_snr --batches 4 --init weights/theta_q  # at θ_q
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass

import numpy as np
import torch

from engine import shipped
from engine.checkpoint import save_json
from engine.embedding import load_embedder
from engine.model import load_model
from training.corpus import training_prompts
from training.distill import DistillConfig, Distiller
from training.settings import parse, setting


def mean_pairwise_cosine(grads: list[torch.Tensor]) -> float:
    return float(np.mean([torch.nn.functional.cosine_similarity(a, b, dim=0).item()
                          for a, b in itertools.combinations(grads, 2)]))


@dataclass(frozen=True)
class SnrSettings:
    base: str = setting(shipped.NANO, "base model")
    init: str | None = setting(None, "student weights (default: the base)")
    embedding: str = setting(shipped.EMBEDDING, "E for the diversity reward")
    batches: int = setting(4, "independent batches (the cosine is between batches)")
    seed: int = setting(0, "seed of prompts and samples")
    out: str | None = setting(None, "write the result as JSON here")

    def __post_init__(self):
        if self.batches < 2:
            raise ValueError(f"--batches must be ≥ 2 (the cosine is between batches), got {self.batches}")


def main(argv=None) -> dict:
    # the objective's settings (prompts, samples, seconds, ...) are the trainer's; β = 1 scales the REINFORCE term
    objective, args = parse([DistillConfig, SnrSettings], argv, description=__doc__)
    cfg = dataclasses.replace(objective, beta=1.0, beta_warmup=0)
    base = load_model(args.base)
    distiller = Distiller(base, cfg, load_embedder(args.embedding).embed)
    params = dict(distiller.student_model.named_parameters())
    if args.init:
        distiller.load_student(args.init)
    prompts = training_prompts(args.seed, args.batches * cfg.prompts)

    def gradient(beta: float, batch: list[str], codes: torch.Tensor) -> torch.Tensor:
        distiller.config = dataclasses.replace(cfg, beta=beta)
        distiller.student_model.zero_grad(set_to_none=True)
        distiller.loss_on(codes, batch, 0)[0].backward()
        return torch.cat([q.grad.reshape(-1) for q in params.values()])

    kl_grads, rl_grads = [], []
    for k in range(args.batches):
        batch = prompts[k * cfg.prompts:(k + 1) * cfg.prompts]
        codes = distiller.sample(batch, torch.Generator().manual_seed(args.seed * 1000 + k))
        g_kl = gradient(0.0, batch, codes)
        rl_grads.append(gradient(1.0, batch, codes) - g_kl)  # the REINFORCE term alone, at β = 1
        kl_grads.append(g_kl)
        print(f"batch {k + 1}/{args.batches}", flush=True)
    result = dict(init=args.init or args.base,
                  batch=f"{cfg.prompts} prompts x {cfg.samples} samples x {cfg.seconds:g} s")
    for name, grads in (("kl", kl_grads), ("reinforce", rl_grads)):
        c = mean_pairwise_cosine(grads)
        result[name] = dict(norm=float(np.mean([g.norm().item() for g in grads])), cosine=c,
                            batches_for_snr_1=(1 - c) / c if c > 0 else float("inf"))
        print(f"{name:9s} gradient norm {result[name]['norm']:8.2f}   mean cosine between batches {c:+.3f}   "
              f"batches to average for signal = noise: {result[name]['batches_for_snr_1']:.1f}")
    if args.out:
        save_json(result, args.out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
