"""The objective of diversity-rewarded CFG distillation (paper Eq. 5): maximise Q + β·D, i.e. minimise KL − β·D.

`DistillConfig` says what one step computes; `Distiller` computes it on a batch. The run around it (optimizer,
schedule, checkpoints, logs, processes) is `training.distill`.

One step:
  1. P prompts, N samples each, drawn from the student at temperature T (on-policy, our sampler, no top-k);
  2. teacher-forced forwards on those sequences: the student (with gradient) and the frozen base with the
     prompt and the negative prompt as one doubled batch (no second generation);
  3. Q: per-sequence KL(student ‖ CFG teacher) over real positions (training.losses.cfg_distillation_kl);
  4. D (β > 0): the diversity reward of `--reward` within each prompt's samples (`training.rewards`: E's
     embeddings, the paper's, or nano's note events), a baseline, REINFORCE through log p_θ(y|x) from the same
     student forward;
  5. loss = mean KL − β_t · surrogate, β_t warmed up linearly over `beta_warmup` steps.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.cfg import DEFAULT_NEGATIVE_PROMPT, PAPER_GAMMA, CfgSetting
from engine.checkpoint import load_state
from engine.decoder import FastDecoder
from engine.generate import SamplingParams, generate_codes
from engine.model import MusicModel, TextCondition
from engine.sampling import apply_delay, delay_valid_mask
from engine.service import Generation, Request, generate
from training.losses import (
    BASELINES,
    DIVERGENCES,
    baselines,
    cfg_distillation_kl,
    per_sample_rewards,
    reinforce_surrogate,
)
from training.rewards import REWARDS, Embedder, reward_kind
from training.settings import setting


@dataclass
class DistillConfig:
    """The objective and its sampling: what one step computes."""

    beta: float = setting(0.0, "diversity coefficient β (paper: 0 for θ_q, 15 for θ_d)")
    beta_warmup: int = setting(100, "steps of linear warm-up of β (paper: 1000 of its run)")
    guidance: float = setting(PAPER_GAMMA, "the teacher's CFG γ")
    negative_prompt: str = setting(DEFAULT_NEGATIVE_PROMPT, "the teacher's negative prompt ('' = unconditional)")
    plausibility: float = setting(0.0, "the teacher's plausibility mask α (our addition; 0 = the paper's CFG): "
                                       "tokens with p_cond < α · max p_cond are masked before CFG")
    top_p: float = setting(0.0, "the teacher's nucleus (top-p) truncation after CFG and temperature (our addition, "
                                "keeps melody onsets the mask removes; 0 = off)")
    divergence: str = setting("reverse", "the distillation divergence: 'reverse' = KL(student ‖ teacher), the "
                                        "paper's (mode-seeking), or 'forward' = KL(teacher ‖ student) (mass-covering; "
                                        "our option)", choices=DIVERGENCES)
    reward: str = setting("embedding", "diversity reward r_D (training.rewards): " + "; ".join(
        f"'{k}': {r.help}" for k, r in REWARDS.items()), choices=REWARDS)
    temperature: float = setting(0.99, "on-policy sampling temperature, also the policies' temperature in the KL")
    prompts: int = setting(8, "P prompts per step (over all processes on the command line; per process here)")
    samples: int = setting(4, "N samples per prompt")
    baseline: str = setting("loo", "REINFORCE baseline: 'loo' (pairwise rewards, needs N ≥ 3) or 'batch'",
                            choices=BASELINES)
    seconds: float = setting(4.0, "length of the sampled clips (s)")
    lr: float = setting(1.5e-4, "peak learning rate (paper: 1.5e-4 at batch 128)")

    def __post_init__(self):
        if not self.beta >= 0:
            raise ValueError(f"beta must be ≥ 0, got {self.beta}")
        if self.beta_warmup < 0:
            raise ValueError(f"beta_warmup must be ≥ 0, got {self.beta_warmup}")
        _ = self.teacher  # γ, the negative prompt and α checked where every CFG setting is (engine.cfg)
        if not 0 <= self.top_p < 1:
            raise ValueError(f"top_p must be in [0, 1) (0 = off), got {self.top_p}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.prompts < 1 or self.samples < 1:
            raise ValueError("prompts and samples must be ≥ 1")
        if self.beta > 0 and self.samples < 2:
            raise ValueError("the diversity reward needs samples ≥ 2 per prompt")
        if self.beta > 0 and self.baseline == "loo" and not reward_kind(self.reward).pairwise:
            raise ValueError(f"baseline 'loo' needs a pairwise reward; {self.reward!r} is set-level: use 'batch'")
        if self.beta > 0 and self.baseline == "loo" and self.samples < 3:
            raise ValueError("baseline 'loo' needs samples ≥ 3 (with 2 samples every advantage is zero); use 'batch'")
        if self.beta > 0 and self.baseline == "batch" and self.prompts < 2:
            raise ValueError("baseline 'batch' needs prompts ≥ 2")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        reward_kind(self.reward)  # a registered reward
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if not self.seconds > 0 or not self.lr > 0:
            raise ValueError("seconds and lr must be > 0")

    @property
    def teacher(self) -> CfgSetting:
        """The CFG teacher the student is distilled from."""
        return CfgSetting(self.guidance, self.negative_prompt, self.plausibility, self.top_p)

    def beta_at(self, step: int) -> float:
        return self.beta * min(1.0, (step + 1) / self.beta_warmup) if self.beta_warmup else self.beta



class Distiller:
    """Holds the frozen teacher (the base decoder) and the student (a trainable copy).

    `forward_model` is what the loss calls for the student's teacher-forced forward: the student itself, or, after
    `prepare`, its DistributedDataParallel wrapper under `accelerate` (same weights, gradients all-reduced).
    `reward` is the diversity reward (`training.rewards`; None when β = 0); `take_timings` returns the seconds it spent
    (decoding audio and embedding it, for E's) since the last call."""

    def __init__(self, base: MusicModel, config: DistillConfig, embedder: Embedder | None = None):
        self.reward = None
        if config.beta > 0:
            kind = reward_kind(config.reward)
            kind.check(base, embedder)
            self.reward = kind.build(base, embedder)
        self.base, self.config = base, config
        self.teacher = base.decoder  # frozen; FastDecoder forward under no_grad
        # eval mode throughout: no dropout, so that the policy scored is the policy sampled (gradients still flow)
        self.student_model = copy.deepcopy(base.decoder.model).eval()
        self.student = FastDecoder(self.student_model)  # sampling view of the same (trained) weights
        self.forward_model = self.student_model
        self.negative = base.encode_text([config.negative_prompt])
        self.autocast: torch.dtype | None = None  # e.g. torch.bfloat16: the forwards under autocast, the loss in fp32

    def enable_checkpointing(self) -> None:
        """Recompute each decoder layer's activations in the backward pass instead of keeping them (transformers'
        gradient checkpointing). It only acts in training mode, so the student is put in training mode with every
        dropout and LayerDrop set to zero: the policy trained stays the policy sampled."""
        model = self.student_model
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop"):
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, 0.0)
        model.train()

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.teacher.device.type, dtype=self.autocast)

    def prepare(self, accelerator) -> None:
        """Wrap the student for distributed training (DDP when several processes; the model itself otherwise)."""
        self.forward_model = accelerator.prepare(self.student_model)

    def take_timings(self) -> dict[str, float]:
        return dict(decode_s=0.0, embed_s=0.0) | (self.reward.take_timings() if self.reward is not None else {})

    def load_student(self, path) -> None:
        """Copy decoder weights from a safetensors file or folder into the student, in place (the sampler's flat
        buffer stays shared); the checks of `engine.checkpoint.load_state` apply."""
        params = dict(self.student_model.named_parameters())
        with torch.no_grad():
            for name, tensor in load_state(path, params).items():
                params[name].copy_(tensor)

    def reset_student_to_base(self) -> None:
        params = dict(self.student_model.named_parameters())
        with torch.no_grad():
            for name, p in self.teacher.model.named_parameters():
                params[name].copy_(p)

    def sampler(self, decoder: FastDecoder, label: str) -> Callable[[Request], Generation]:
        """Requests -> clips from `decoder` (student or teacher), exactly as the serving engine makes them."""
        return lambda req: generate(self.base, decoder, req, label)

    def _conditions(self, prompts: list[str], n: int) -> TextCondition:
        cond = self.base.encode_text(prompts)
        dev = self.teacher.device
        return TextCondition(cond.hidden.repeat_interleave(n, 0).to(dev), cond.mask.repeat_interleave(n, 0).to(dev),
                             cond.truncated)

    def sample(self, prompts: list[str], generator: torch.Generator) -> Tensor:
        """(P * N, K, T) codes from the student, N consecutive rows per prompt."""
        cfg = self.config
        frames = self.base.num_frames(cfg.seconds)
        params = SamplingParams(temperature=cfg.temperature, top_k=0, top_p=0.0)  # exact on-policy samples
        return torch.cat([generate_codes(self.student, self.base.encode_text([p]), cfg.samples, frames, params,
                                         generator).codes for p in prompts])

    def step_loss(self, prompts: list[str], step: int, generator: torch.Generator) -> tuple[Tensor, dict]:
        """Sample on-policy, then the loss on those samples."""
        return self.loss_on(self.sample(prompts, generator), prompts, step)

    @torch.no_grad()
    def heldout_kl(self, prompts: list[str], seed: int, step: int) -> float:
        """Mean KL to the teacher on fresh student samples for the first P `prompts` (no DDP collectives)."""
        gen = torch.Generator(device=self.teacher.device).manual_seed(seed)
        codes = self.sample(prompts[:self.config.prompts], gen)
        return self.loss_on(codes, prompts[:self.config.prompts], step, forward=self.student_model)[1]["kl"]

    def _teacher_logits(self, inputs: Tensor, cond: TextCondition) -> Tensor:
        """(2B, K, L, V) logits of the base for the prompts and the negative prompt, as one doubled batch."""
        B = inputs.shape[0]
        neg = TextCondition(self.negative.hidden.to(inputs.device), self.negative.mask.to(inputs.device), [False])
        width = max(cond.hidden.shape[1], neg.hidden.shape[1])
        (hc, mc), (hn, mn) = cond.padded(width), neg.padded(width)
        state = self.teacher.new_state(torch.cat([hc, hn.expand(B, -1, -1)]), torch.cat([mc, mn.expand(B, -1)]),
                                       max_len=None)
        return self.teacher.forward(inputs.repeat(2, 1, 1), 0, state)

    def loss_on(self, codes: Tensor, prompts: list[str], step: int, forward=None) -> tuple[Tensor, dict]:
        """KL − β_t·surrogate on given codes (B = P·N, K, T), N consecutive rows per prompt. `forward`: the
        student's forward for the loss (default `forward_model`)."""
        cfg = self.config
        B, K, T = codes.shape
        delayed = apply_delay(codes, self.teacher.config.pad_token_id)
        inputs, targets = delayed[:, :, :-1], delayed[:, :, 1:]
        mask = delay_valid_mask(K, T)[:, 1:].expand(B, -1, -1)  # (B, K, T + K - 1)
        cond = self._conditions(prompts, cfg.samples)
        with self._autocast():
            student_logits = (forward or self.forward_model)(
                input_ids=inputs.reshape(B * K, -1), encoder_hidden_states=cond.hidden, encoder_attention_mask=cond.mask
            ).logits.view(B, K, -1, self.teacher.vocab_size)
            with torch.no_grad():
                teacher_logits = self._teacher_logits(inputs, cond)
        kl = cfg_distillation_kl(student_logits, teacher_logits[:B], teacher_logits[B:], cfg.guidance, mask,
                                 cfg.temperature, cfg.plausibility, cfg.top_p, cfg.divergence)
        loss = kl.mean()
        metrics = dict(kl=kl.mean().item(), kl_std=kl.std().item() if B > 1 else 0.0, beta=cfg.beta_at(step))
        if cfg.beta > 0:
            surrogate, rl_metrics = self._diversity_surrogate(codes, student_logits, targets, mask, len(prompts))
            loss = loss - metrics["beta"] * surrogate
            metrics.update(rl_metrics)
        with torch.no_grad():
            p = F.softmax(student_logits.float() / cfg.temperature, dim=-1)
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
            metrics.update(entropy=(entropy * mask).sum().item() / mask.sum().item())
        return loss, metrics

    def _diversity_surrogate(self, codes: Tensor, student_logits: Tensor, targets: Tensor, mask: Tensor,
                             num_prompts: int) -> tuple[Tensor, dict]:
        """REINFORCE surrogate of the diversity reward (ascend it) and its metrics."""
        cfg = self.config
        log_p = F.log_softmax(student_logits.float() / cfg.temperature, dim=-1)
        token_lp = log_p.gather(-1, targets.clamp(max=self.teacher.vocab_size - 1)[..., None]).squeeze(-1)
        seq_lp = (token_lp * mask).sum(dim=(1, 2)).view(num_prompts, cfg.samples)  # (P, N)
        with torch.no_grad():
            scored = self.reward(codes.view(num_prompts, cfg.samples, *codes.shape[1:]))
            distances = scored if self.reward.pairwise else None  # (P, N, N), or per-sample rewards (P, N)
            rewards = per_sample_rewards(scored) if self.reward.pairwise else scored
            adv = rewards - baselines(distances, rewards, cfg.baseline)
        metrics = dict(reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
                       advantage_std=adv.std().item(), log_prob=seq_lp.mean().item())
        return reinforce_surrogate(seq_lp, adv), metrics


def teacher_name(config: DistillConfig) -> str:
    """The teacher's name in the trainer's eval rows (the app's label of the same CFG setting)."""
    return config.teacher.label
