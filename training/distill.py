"""Diversity-rewarded CFG distillation (paper Eq. 5): maximise Q + β·D, i.e. minimise KL − β·D.

One step:
  1. P prompts, N samples each, drawn from the student at temperature T (on-policy, our sampler, no top-k);
  2. teacher-forced forwards on those sequences: the student (with gradient) and the frozen base with the
     prompt and the negative prompt as one doubled batch (no second generation);
  3. Q: per-sequence KL(student ‖ CFG teacher) over real positions (training.losses.cfg_distillation_kl);
  4. D (β > 0): decode audio, embed with E, per-sample mean pairwise diversity, baseline, REINFORCE through
     log p_θ(y|x) from the same student forward;
  5. loss = mean KL − β_t · surrogate, β_t warmed up linearly over `beta_warmup` steps.

    python -m training.distill --base weights/nano --beta 0 --steps 300 --out runs/theta_q
    python -m training.distill --out runs/theta_q --export weights/theta_q

Status: β = 0 (θ_q) runs end to end, with CSV logs, atomic checkpoints, exact resume and a NaN stop.
Still to come: E for β > 0 (the scorers issue), evaluation with the quality/diversity scorers, TensorBoard,
and multi-process training under `accelerate`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.decoder import FastDecoder
from engine.generate import SamplingParams, generate_codes
from engine.model import MusicModel, TextCondition
from engine.sampling import apply_delay, delay_valid_mask
from engine.service import DEFAULT_NEGATIVE_PROMPT
from training.losses import baselines, cfg_distillation_kl, per_sample_rewards, reinforce_surrogate

Embedder = Callable[[Tensor, int], Tensor]  # (waveforms (B, samples), sample rate) -> embeddings (B, D)


@dataclass
class DistillConfig:
    beta: float = 0.0  # diversity coefficient β (paper: 0 for θ_q, 15 for θ_d)
    beta_warmup: int = 100  # steps of linear warm-up of β (paper: 1000 of its run)
    guidance: float = 3.0  # teacher's CFG γ
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # "" = unconditional teacher branch
    temperature: float = 0.99  # on-policy sampling temperature, also the policies' temperature in the KL
    prompts: int = 8  # P prompts per step
    samples: int = 4  # N samples per prompt
    baseline: str = "loo"  # "loo" (needs N ≥ 3) or "batch"
    seconds: float = 4.0  # length of the sampled clips
    lr: float = 1.5e-4  # paper: 1.5e-4 at batch 128

    def __post_init__(self):
        if not self.beta >= 0:
            raise ValueError(f"beta must be ≥ 0, got {self.beta}")
        if self.beta_warmup < 0:
            raise ValueError(f"beta_warmup must be ≥ 0, got {self.beta_warmup}")
        if not self.guidance >= 1:
            raise ValueError(f"guidance must be ≥ 1, got {self.guidance}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.prompts < 1 or self.samples < 1:
            raise ValueError("prompts and samples must be ≥ 1")
        if self.beta > 0 and self.samples < 2:
            raise ValueError("the diversity reward needs samples ≥ 2 per prompt")
        if self.beta > 0 and self.baseline == "loo" and self.samples < 3:
            raise ValueError("baseline 'loo' needs samples ≥ 3 (with 2 samples every advantage is zero); use 'batch'")
        if self.beta > 0 and self.baseline == "batch" and self.prompts < 2:
            raise ValueError("baseline 'batch' needs prompts ≥ 2")
        if self.baseline not in ("loo", "batch"):
            raise ValueError(f"baseline must be 'loo' or 'batch', got {self.baseline!r}")
        if not self.seconds > 0 or not self.lr > 0:
            raise ValueError("seconds and lr must be > 0")

    def beta_at(self, step: int) -> float:
        return self.beta * min(1.0, (step + 1) / self.beta_warmup) if self.beta_warmup else self.beta


class Distiller:
    """Holds the frozen teacher (the base decoder) and the student (a trainable copy)."""

    def __init__(self, base: MusicModel, config: DistillConfig, embedder: Embedder | None = None):
        if config.beta > 0 and embedder is None:
            raise ValueError("β > 0 needs a diversity embedding E")
        self.base, self.config, self.embedder = base, config, embedder
        self.teacher = base.decoder  # frozen; FastDecoder forward under no_grad
        # eval mode throughout: no dropout, so that the policy scored is the policy sampled (gradients still flow)
        self.student_model = copy.deepcopy(base.decoder.model).eval()
        self.student = FastDecoder(self.student_model)  # sampling view of the same (trained) weights
        self.negative = base.encode_text([config.negative_prompt])

    def _conditions(self, prompts: list[str], n: int) -> TextCondition:
        cond = self.base.encode_text(prompts)
        return TextCondition(cond.hidden.repeat_interleave(n, 0), cond.mask.repeat_interleave(n, 0), cond.truncated)

    def sample(self, prompts: list[str], generator: torch.Generator) -> Tensor:
        """(P * N, K, T) codes from the student, N consecutive rows per prompt."""
        cfg = self.config
        frames = max(1, round(cfg.seconds * self.base.frame_rate))
        params = SamplingParams(temperature=cfg.temperature, top_k=0, top_p=0.0)  # exact on-policy samples
        return torch.cat([generate_codes(self.student, self.base.encode_text([p]), cfg.samples, frames, params, generator).codes
                          for p in prompts])

    def step_loss(self, prompts: list[str], step: int, generator: torch.Generator) -> tuple[Tensor, dict]:
        """Sample on-policy, then the loss on those samples."""
        return self.loss_on(self.sample(prompts, generator), prompts, step)

    def loss_on(self, codes: Tensor, prompts: list[str], step: int) -> tuple[Tensor, dict]:
        """KL − β_t·surrogate on given codes (B = P·N, K, T), N consecutive rows per prompt."""
        cfg = self.config
        B, K, T = codes.shape
        pad = self.teacher.config.pad_token_id
        delayed = apply_delay(codes, pad)
        inputs, targets = delayed[:, :, :-1], delayed[:, :, 1:]
        mask = delay_valid_mask(K, T)[:, 1:].expand(B, -1, -1)  # (B, K, T + K - 1)
        cond = self._conditions(prompts, cfg.samples)
        student_logits = self.student_model(input_ids=inputs.reshape(B * K, -1), encoder_hidden_states=cond.hidden,
                                            encoder_attention_mask=cond.mask).logits.view(B, K, -1, self.teacher.vocab_size)
        with torch.no_grad():
            neg = self.negative
            width = max(cond.hidden.shape[1], neg.hidden.shape[1])
            hc = F.pad(cond.hidden, (0, 0, 0, width - cond.hidden.shape[1]))
            mc = F.pad(cond.mask, (0, width - cond.mask.shape[1]))
            hn = F.pad(neg.hidden, (0, 0, 0, width - neg.hidden.shape[1])).expand(B, -1, -1)
            mn = F.pad(neg.mask, (0, width - neg.mask.shape[1])).expand(B, -1)
            state = self.teacher.new_state(torch.cat([hc, hn]), torch.cat([mc, mn]), max_len=None)
            teacher_logits = self.teacher.forward(inputs.repeat(2, 1, 1), 0, state)  # (2B, K, L, V), one doubled batch
        kl = cfg_distillation_kl(student_logits, teacher_logits[:B], teacher_logits[B:], cfg.guidance, mask, cfg.temperature)
        loss = kl.mean()
        metrics = dict(kl=kl.mean().item(), kl_std=kl.std().item() if B > 1 else 0.0)
        beta = cfg.beta_at(step)
        if cfg.beta > 0:
            log_p = F.log_softmax(student_logits.float() / cfg.temperature, dim=-1)
            token_lp = log_p.gather(-1, targets.clamp(max=self.teacher.vocab_size - 1)[..., None]).squeeze(-1)
            seq_lp = (token_lp * mask).sum(dim=(1, 2)).view(len(prompts), cfg.samples)  # (P, N)
            with torch.no_grad():
                audio = self.base.codec.decode(codes)
                emb = self.embedder(audio, self.base.sample_rate).view(len(prompts), cfg.samples, -1)
                rewards = per_sample_rewards(emb)
                adv = rewards - baselines(emb, rewards, cfg.baseline)
            loss = loss - beta * reinforce_surrogate(seq_lp, adv)
            metrics.update(reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
                           advantage_std=adv.std().item(), log_prob=seq_lp.mean().item())
        with torch.no_grad():
            p = F.softmax(student_logits.float() / cfg.temperature, dim=-1)
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
            metrics.update(beta=beta, entropy=(entropy * mask).sum().item() / mask.sum().item())
        return loss, metrics


# ---------------------------------------------------------------- command line
def training_prompts(seed: int, n: int, frames: int = 32) -> list[str]:
    """Clean captions of the corpus's training split (the prompts of the finetuning)."""
    from training.corpus import generate_piece, split_of

    out, i = [], 0
    while len(out) < n:
        if split_of(i) == "train":
            piece = generate_piece(seed, i, frames)
            if not piece.attributes["degraded"]:
                out.append(piece.caption)
        i += 1
    return out


def heldout_prompts(seed: int, n: int, frames: int = 32) -> list[str]:
    from training.corpus import HELD_OUT_EVERY, generate_piece

    out, i = [], 0
    while len(out) < n:
        piece = generate_piece(seed, i, frames)
        if not piece.attributes["degraded"]:
            out.append(piece.caption)
        i += HELD_OUT_EVERY
    return out


def _save(out, distiller, optimizer, state) -> None:
    from engine.checkpoint import optimizer_tensors, save_json, save_state

    params = dict(distiller.student_model.named_parameters())
    save_state(params, out / "decoder.safetensors")
    save_state(optimizer_tensors(optimizer, params), out / "optimizer.safetensors")
    save_json(state, out / "state.json")  # last: it marks the checkpoint complete


def _resume(out, distiller, optimizer) -> dict:
    import json

    from engine.checkpoint import read_safetensors, restore_optimizer

    distiller.student_model.load_state_dict(read_safetensors(out / "decoder.safetensors"))
    restore_optimizer(optimizer, dict(distiller.student_model.named_parameters()), read_safetensors(out / "optimizer.safetensors"))
    return json.loads((out / "state.json").read_text())


def main(argv=None) -> None:
    import argparse
    import csv
    import time
    from pathlib import Path

    import numpy as np

    from engine.checkpoint import save_json, save_state
    from engine.model import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    p.add_argument("--base", default="weights/nano", help="base model θ_init (teacher and initial student)")
    # objective
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--beta-warmup", type=int, default=100)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    p.add_argument("--temperature", type=float, default=0.99)
    p.add_argument("--baseline", default="loo", choices=["loo", "batch"])
    # optimisation
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1.5e-4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    # run
    p.add_argument("--out", default="runs/distill")
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--export", default=None, help="only write the run's student as fp16 safetensors here and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.export:
        from engine.checkpoint import read_safetensors

        weights = read_safetensors(out / "decoder.safetensors")
        save_state({k: v.half() for k, v in weights.items()}, Path(args.export) / "decoder.safetensors")
        return

    cfg = DistillConfig(args.beta, args.beta_warmup, args.guidance, args.negative_prompt, args.temperature, args.prompts,
                        args.samples, args.baseline, args.seconds, args.lr)
    base = load_model(args.base)
    distiller = Distiller(base, cfg)  # β > 0 needs E: comes with the scorers
    optimizer = torch.optim.AdamW(distiller.student_model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(step=0)
    if (out / "state.json").exists():
        state = _resume(out, distiller, optimizer)
        print(f"resumed at step {state['step']}")
    else:
        save_json(vars(args), out / "config.json")
    prompts = training_prompts(args.seed, 1024)
    held = heldout_prompts(args.seed, 16)
    fields = ["step", "loss", "kl", "kl_std", "heldout_kl", "beta", "entropy", "reward_mean", "reward_std",
              "advantage_std", "log_prob", "sample_s", "step_s"]
    log = open(out / "log.csv", "a", newline="")
    writer = csv.DictWriter(log, fieldnames=fields, extrasaction="ignore")
    if state["step"] == 0:
        writer.writeheader()
    while state["step"] < args.steps:
        step = state["step"]
        rng = np.random.default_rng([args.seed, step])  # per-step randomness: resume is exact
        batch = [prompts[i] for i in rng.choice(len(prompts), cfg.prompts, replace=False)]
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        t0 = time.perf_counter()
        codes = distiller.sample(batch, gen)
        t_sample = time.perf_counter() - t0
        loss, metrics = distiller.loss_on(codes, batch, step)
        if not torch.isfinite(loss):
            print(f"step {step}: loss is {loss.item()}; stopping, the last good checkpoint stays in {out}")
            raise SystemExit(1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(distiller.student_model.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        row = dict(metrics, step=state["step"], loss=loss.item(), sample_s=t_sample, step_s=time.perf_counter() - t0)
        if state["step"] % args.eval_every == 0:
            with torch.no_grad():
                eval_gen = torch.Generator().manual_seed(args.seed)
                row["heldout_kl"] = distiller.step_loss(held[:cfg.prompts], state["step"], eval_gen)[1]["kl"]
        writer.writerow(row)
        log.flush()
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        if state["step"] % args.save_every == 0 or state["step"] == args.steps:
            _save(out, distiller, optimizer, state)


if __name__ == "__main__":
    main()
