"""Diversity-rewarded CFG distillation (paper Eq. 5): maximise Q + β·D, i.e. minimise KL − β·D.

One step:
  1. P prompts, N samples each, drawn from the student at temperature T (on-policy, our sampler, no top-k);
  2. teacher-forced forwards on those sequences: the student (with gradient) and the frozen base with the
     prompt and the negative prompt as one doubled batch (no second generation);
  3. Q: per-sequence KL(student ‖ CFG teacher) over real positions (training.losses.cfg_distillation_kl);
  4. D (β > 0): pairwise r_D within each prompt's samples, by `--reward`: decode audio and embed with E (the
     paper's), or, on nano, read the note events from the tokens (`engine.exact.event_distances`, our addition);
     per-sample mean pairwise diversity, baseline, REINFORCE through log p_θ(y|x) from the same student forward;
  5. loss = mean KL − β_t · surrogate, β_t warmed up linearly over `beta_warmup` steps.

    python -m training.distill --beta 0 --steps 300 --out runs/theta_q        # θ_q
    python -m training.distill --beta 15 --steps 300 --out runs/theta_d       # θ_d (E from weights/embedding)
    accelerate launch --cpu --num_processes 2 -m training.distill ...         # P prompts split over processes
    python -m training.export distill runs/theta_q weights/theta_q           # fp16 decoder for serving
    python -m training.eval_snapshots --run runs/theta_q                      # re-evaluate with other scorers

Logs: CSV (`log.csv`), TensorBoard (`tb/`), tqdm; eval (`eval.csv`) every `--eval-every` steps with the held-out
evaluation of `training.heldout` (the one `training.evaluate` uses: same prompts, seeds and averages): KL to the
CFG teacher, quality (ω·adherence + audio quality) and diversity (mean r_D, Vendi) with the shipped scorers, next
to the base with and without CFG measured once at step 0.
fp16 snapshots of the student every `--snapshot-every` steps (`snapshots/`) feed quality/diversity along training.
Checkpoints (atomic, every `--save-every` steps): student, optimizer, scheduler; the per-step randomness is
derived from (seed, step, process), so a resumed run draws exactly what an uninterrupted one would.
A non-finite loss or gradient stops the run and keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from engine.checkpoint import (
    CheckpointError,
    load_state,
    optimizer_tensors,
    read_safetensors,
    restore_optimizer,
    save_csv,
    save_json,
    save_state,
)
from engine.decoder import FastDecoder
from engine.diversity import pairwise_diversity
from engine.embedding import load_embedder
from engine.exact import event_distances
from engine.generate import SamplingParams, generate_codes
from engine.model import MusicModel, TextCondition, load_model
from engine.sampling import apply_delay, delay_valid_mask
from engine.scorers import Scorers, load_quality_scorer
from engine.service import DEFAULT_NEGATIVE_PROMPT, Generation, Request, generate
from training.corpus import heldout_prompts, training_prompts
from training.heldout import HeldoutSettings, is_readable, measure
from training.losses import DIVERGENCES, baselines, cfg_distillation_kl, per_sample_rewards, reinforce_surrogate
from training.settings import parse, setting

Embedder = Callable[[Tensor, int], Tensor]  # (waveforms (B, samples), sample rate) -> embeddings (B, D)
TRAINING_PROMPTS = 1024  # clean training-split captions each step draws its P prompts from
REWARDS = ("embedding", "events")


@dataclass
class DistillConfig:
    """The objective and its sampling: what one step computes."""

    beta: float = setting(0.0, "diversity coefficient β (paper: 0 for θ_q, 15 for θ_d)")
    beta_warmup: int = setting(100, "steps of linear warm-up of β (paper: 1000 of its run)")
    guidance: float = setting(3.0, "the teacher's CFG γ")
    negative_prompt: str = setting(DEFAULT_NEGATIVE_PROMPT, "the teacher's negative prompt ('' = unconditional)")
    plausibility: float = setting(0.0, "the teacher's plausibility mask α (our addition; 0 = the paper's CFG): "
                                       "tokens with p_cond < α · max p_cond are masked before CFG")
    top_p: float = setting(0.0, "the teacher's nucleus (top-p) truncation after CFG and temperature (our addition, "
                                "keeps melody onsets the mask removes; 0 = off)")
    divergence: str = setting("reverse", "the distillation divergence: 'reverse' = KL(student ‖ teacher), the "
                                        "paper's (mode-seeking), or 'forward' = KL(teacher ‖ student) (mass-covering; "
                                        "our option)", choices=DIVERGENCES)
    reward: str = setting("embedding", "diversity reward r_D: 'embedding' (1 − cosine of E's embeddings, the paper's) "
                                       "or 'events' (nano only: the share of differing note events, read from the "
                                       "tokens by engine.exact; our addition)", choices=REWARDS)
    temperature: float = setting(0.99, "on-policy sampling temperature, also the policies' temperature in the KL")
    prompts: int = setting(8, "P prompts per step (over all processes on the command line; per process here)")
    samples: int = setting(4, "N samples per prompt")
    baseline: str = setting("loo", "REINFORCE baseline: 'loo' (needs N ≥ 3) or 'batch'", choices=("loo", "batch"))
    seconds: float = setting(4.0, "length of the sampled clips (s)")
    lr: float = setting(1.5e-4, "peak learning rate (paper: 1.5e-4 at batch 128)")

    def __post_init__(self):
        if not self.beta >= 0:
            raise ValueError(f"beta must be ≥ 0, got {self.beta}")
        if self.beta_warmup < 0:
            raise ValueError(f"beta_warmup must be ≥ 0, got {self.beta_warmup}")
        if not self.guidance >= 1:
            raise ValueError(f"guidance must be ≥ 1, got {self.guidance}")
        if not 0 <= self.plausibility < 1:
            raise ValueError(f"plausibility must be in [0, 1) (0 = off), got {self.plausibility}")
        if not 0 <= self.top_p < 1:
            raise ValueError(f"top_p must be in [0, 1) (0 = off), got {self.top_p}")
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
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.baseline not in ("loo", "batch"):
            raise ValueError(f"baseline must be 'loo' or 'batch', got {self.baseline!r}")
        if not self.seconds > 0 or not self.lr > 0:
            raise ValueError("seconds and lr must be > 0")

    def beta_at(self, step: int) -> float:
        return self.beta * min(1.0, (step + 1) / self.beta_warmup) if self.beta_warmup else self.beta


@dataclass
class RunSettings:
    """Models, schedule, evaluation and files of a training run."""

    base: str = setting("weights/nano", "base model θ_init (teacher and initial student)")
    init: str | None = setting(None, "start the student from these decoder weights (e.g. weights/theta_q) instead of "
                                     "the base; the teacher stays the base")
    embedding: str = setting("weights/embedding", "E for the diversity reward and eval ('' = none)")
    quality: str = setting("weights/quality", "quality scorer for eval ('' = none)")
    accumulate: int = setting(1, "micro-batches of --prompts × --samples per optimizer step (gradient accumulation): "
                                 "the REINFORCE gradient of one 32-sample batch is mostly noise (training.grad_snr)")
    lr_warmup: int = setting(10, "steps of linear learning-rate warm-up")
    steps: int = setting(300, "optimizer steps")
    seed: int = setting(0, "seed of prompts, samples and the held-out evaluation")
    out: str = setting("runs/distill", "run folder (checkpoints, logs, snapshots); an existing run resumes")
    save_every: int = setting(25, "checkpoint every N steps")
    eval_every: int = setting(50, "held-out evaluation every N steps (0 = never)")
    snapshot_every: int = setting(50, "keep an fp16 copy of the student every N steps (0 = never)")
    eval_prompts: int = setting(16, "held-out prompts of the evaluation")
    eval_samples: int = setting(4, "clips per held-out prompt")
    threads: int = setting(0, "torch threads per process (0: cores / processes)")
    autocast: str = setting("none", "the forwards under autocast ('bf16' on GPUs: about half the activation memory "
                                     "and faster matmuls; the loss stays fp32)", choices=("none", "bf16"))
    checkpointing: bool = setting(False, "gradient checkpointing of the student's decoder layers (recompute in the "
                                         "backward pass: far less activation memory, about a third more compute)")
    prompts_file: str = setting("", "JSON {\"train\": [...], \"heldout\": [...]} of prompts (default: nano's corpus "
                                    "captions; training.recipe_prompts writes one for a real MusicGen)")

    def __post_init__(self):
        if self.accumulate < 1:
            raise ValueError(f"--accumulate must be ≥ 1, got {self.accumulate}")
        if self.steps < 0 or self.save_every < 1 or self.eval_every < 0 or self.snapshot_every < 0:
            raise ValueError("steps, eval_every and snapshot_every must be ≥ 0 and save_every ≥ 1")


class NonFiniteLoss(RuntimeError):
    """A loss or gradient norm that is NaN or infinite: the run stops, the last good checkpoint stays."""


class Distiller:
    """Holds the frozen teacher (the base decoder) and the student (a trainable copy).

    `forward_model` is what the loss calls for the student's teacher-forced forward: the student itself, or, after
    `prepare`, its DistributedDataParallel wrapper under `accelerate` (same weights, gradients all-reduced).
    `timings` accumulates the seconds spent decoding audio and embedding it (the diversity term) until
    `take_timings`."""

    def __init__(self, base: MusicModel, config: DistillConfig, embedder: Embedder | None = None):
        if config.beta > 0 and config.reward == "embedding" and embedder is None:
            raise ValueError("β > 0 needs a diversity embedding E")
        if config.beta > 0 and config.reward == "events" and not is_readable(base.codec):
            raise ValueError("the 'events' reward reads note events from tokens: only nano's score codec has them")
        self.base, self.config, self.embedder = base, config, embedder
        self.teacher = base.decoder  # frozen; FastDecoder forward under no_grad
        # eval mode throughout: no dropout, so that the policy scored is the policy sampled (gradients still flow)
        self.student_model = copy.deepcopy(base.decoder.model).eval()
        self.student = FastDecoder(self.student_model)  # sampling view of the same (trained) weights
        self.forward_model = self.student_model
        self.negative = base.encode_text([config.negative_prompt])
        self.timings = dict(decode_s=0.0, embed_s=0.0)
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
        out, self.timings = self.timings, dict(decode_s=0.0, embed_s=0.0)
        return out

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
            distances = self._distances(codes, num_prompts)
            rewards = per_sample_rewards(distances)
            adv = rewards - baselines(distances, rewards, cfg.baseline)
        metrics = dict(reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
                       advantage_std=adv.std().item(), log_prob=seq_lp.mean().item())
        return reinforce_surrogate(seq_lp, adv), metrics

    def _distances(self, codes: Tensor, num_prompts: int) -> Tensor:
        """Pairwise r_D within each prompt's samples, (P, N, N), by the configured reward."""
        n = self.config.samples
        if self.config.reward == "events":
            groups = codes.view(num_prompts, n, *codes.shape[1:]).cpu().numpy()
            return torch.stack([torch.from_numpy(event_distances(g)).float() for g in groups]).to(codes.device)
        t0 = time.perf_counter()
        audio = self.base.codec.decode(codes)
        t1 = time.perf_counter()
        emb = self.embedder(audio, self.base.sample_rate).view(num_prompts, n, -1)
        self.timings["decode_s"] += t1 - t0
        self.timings["embed_s"] += time.perf_counter() - t1
        return pairwise_diversity(emb)


# ---------------------------------------------------------------- held-out evaluation
LOG_FIELDS = ["step", "loss", "kl", "kl_std", "beta", "entropy", "reward_mean", "reward_std", "advantage_std",
              "log_prob", "lr", "grad_norm", "sample_s", "decode_s", "embed_s", "fwd_bwd_s", "step_s"]
EVAL_FIELDS = ["step", "model", "heldout_kl", "exact_quality", "exact_quality_sem", "exact_adherence", "clean",
               "quality", "quality_sem", "adherence", "adherence_sem", "audio_quality", "audio_quality_sem",
               "diversity", "diversity_sem", "vendi", "vendi_sem",
               "event_diversity", "event_diversity_sem", "sample_s_per_clip"]


def teacher_name(config: DistillConfig) -> str:
    mask = f" α={config.plausibility:g}" if config.plausibility else ""
    mask += f" top-p={config.top_p:g}" if config.top_p else ""
    neg = "" if config.negative_prompt else " unconditional"
    return f"base+CFG γ={config.guidance:g}{mask}{neg}"


@torch.no_grad()
def eval_rows(distiller: Distiller, step: int, prompts: list[str], settings: HeldoutSettings,
              scorers: Scorers | None) -> list[dict]:
    """Eval rows at `step` (`training.heldout.measure`): the student, or at step 0 the references (base without and
    with the teacher's CFG) and the student if it starts elsewhere (--init). Each row but the CFG teacher's also
    has the held-out KL to the teacher."""
    cfg = distiller.config
    models = [("student", distiller.student, 1.0)]
    started_from_base = torch.equal(distiller.student.flat, distiller.teacher.flat)
    if step == 0:
        models = [("base", distiller.teacher, 1.0), (teacher_name(cfg), distiller.teacher, cfg.guidance)]
        models += [] if started_from_base else [("student", distiller.student, 1.0)]
    rows = []
    for name, decoder, gamma in models:
        # the teacher's mask belongs to the teacher: the base and the student are sampled plainly
        result = measure(distiller.sampler(decoder, name), prompts, settings, scorers,
                         is_readable(distiller.base.codec), guidance=gamma, negative=cfg.negative_prompt,
                         plausibility=cfg.plausibility if gamma > 1 else 0.0, top_p=cfg.top_p if gamma > 1 else 0.0)
        row = dict(step=step, model=name, **result.summary())
        # the held-out KL is the student's: it is the base's only while the student is still the base
        if name == "student" or (name == "base" and started_from_base):
            row["heldout_kl"] = distiller.heldout_kl(prompts, settings.seed, step)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the training loop
class RunLog:
    """log.csv and eval.csv (appended, rows after the resumed checkpoint dropped), TensorBoard and the console."""

    def __init__(self, out: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (imports TensorBoard: main process only)

        self.writer = SummaryWriter(str(out / "tb"), purge_step=step + 1)
        for name in ("log.csv", "eval.csv"):  # rows logged after the checkpoint we resume from are redone: drop them
            drop_rows_after(out / name, step)
        self.files = [open(out / name, "a", newline="") for name in ("log.csv", "eval.csv")]
        self.log = csv.DictWriter(self.files[0], fieldnames=LOG_FIELDS, extrasaction="ignore")
        self.eval = csv.DictWriter(self.files[1], fieldnames=EVAL_FIELDS, extrasaction="ignore")
        if step == 0:
            self.log.writeheader()
            self.eval.writeheader()

    def step(self, row: dict) -> None:
        self.log.writerow(row)
        self.files[0].flush()
        for k, v in row.items():
            if k != "step":
                self.writer.add_scalar(f"train/{k}", v, row["step"])

    def evaluation(self, row: dict) -> None:
        self.eval.writerow(row)
        self.files[1].flush()
        for k, v in row.items():
            if isinstance(v, float):
                self.writer.add_scalar(f"eval_{row['model']}/{k}", v, row["step"])
        tqdm.write(f"eval step {row['step']} {row['model']}: "
                   + " ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))

    def close(self) -> None:
        self.writer.close()
        for f in self.files:
            f.close()


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the header and the rows of steps ≤ `step` of a CSV log (atomically; nothing to do if absent)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [r for r in rows[1:] if r and int(float(r[0])) <= step]
    if len(kept) != len(rows) - 1:
        save_csv([dict(zip(rows[0], r)) for r in kept], rows[0], path)


class Trainer:
    """One training run: the distiller, its optimizer and schedule, the prompts, checkpoints and logs."""

    def __init__(self, objective: DistillConfig, run: RunSettings):
        from accelerate import Accelerator  # noqa: PLC0415 (about 1 s to import; only a training run needs it)

        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU: gloo when launched with several
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main_proc = self.accelerator.is_main_process
        torch.set_num_threads(run.threads or max(1, (os.cpu_count() or 1) // self.world))
        if objective.prompts % self.world:
            raise SystemExit(f"--prompts {objective.prompts} must be a multiple of the {self.world} processes")
        self.run, self.objective, self.out = run, objective, Path(run.out)
        self.distiller, self.scorers = build_distiller(objective, run, self.world, self.accelerator.device)
        student = self.distiller.student_model.parameters()
        self.optimizer = torch.optim.AdamW(student, lr=objective.lr, betas=(0.9, 0.95), weight_decay=0.0)
        warm = max(1, run.lr_warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        self.state = dict(step=0)

    # -- setup
    def resume_or_start(self) -> None:
        """Continue from the run folder's checkpoint, or start (student from --init, config.json written)."""
        if (self.out / "state.json").exists():
            self.state = self._resume()
            self.say(f"resumed at step {self.state['step']}")
        else:
            if self.run.init:
                self.distiller.load_student(self.run.init)
            if self.main_proc:
                self.out.mkdir(parents=True, exist_ok=True)
                config = dict(dataclasses.asdict(self.objective), **dataclasses.asdict(self.run), processes=self.world)
                save_json(config, self.out / "config.json")
        self.distiller.prepare(self.accelerator)  # after loading: every process starts from the same weights

    def _resume(self) -> dict:
        params = dict(self.distiller.student_model.named_parameters())
        try:
            state = json.loads((self.out / "state.json").read_text())
            sched = state.pop("scheduler")
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{self.out / 'state.json'}: not a readable training state ({e})") from None
        self.distiller.load_student(self.out / "decoder.safetensors")
        restore_optimizer(self.optimizer, params, read_safetensors(self.out / "optimizer.safetensors"))
        self.scheduler.load_state_dict(sched)
        return state

    def say(self, message: str) -> None:
        if self.main_proc:
            print(message, flush=True)

    # -- one step
    def _micro_batch(self, prompts: list[str], step: int, micro: int) -> tuple[list[str], torch.Generator]:
        """This process's prompts and generator for (step, micro-batch): the same draws on every process and after a
        resume, so that a resumed run is exact."""
        run = self.run
        rng = np.random.default_rng([run.seed, step] if run.accumulate == 1 else [run.seed, step, micro])
        batch = [prompts[i] for i in rng.choice(len(prompts), self.objective.prompts, replace=False)]
        gen = torch.Generator(device=self.distiller.teacher.device).manual_seed(int(rng.integers(2**62)) + self.rank)
        return batch[self.rank::self.world], gen

    def train_step(self, prompts: list[str]) -> dict:
        """One optimizer step over `accumulate` micro-batches; returns its log row. Raises NonFiniteLoss."""
        step, acc, d = self.state["step"], self.accelerator, self.distiller
        self.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        t_sample, totals, parts = 0.0, [], []
        for micro in range(self.run.accumulate):
            batch, gen = self._micro_batch(prompts, step, micro)
            t1 = time.perf_counter()
            codes = d.sample(batch, gen)
            t_sample += time.perf_counter() - t1
            last = micro == self.run.accumulate - 1
            with contextlib.nullcontext() if last else acc.no_sync(d.forward_model):
                loss, metrics = d.loss_on(codes, batch, step)
                total = acc.reduce(loss.detach().clone(), "mean")
                if not torch.isfinite(total):
                    raise NonFiniteLoss(f"step {step}: loss is {total.item()}")
                acc.backward(loss / self.run.accumulate)
            totals.append(total.item())
            parts.append(metrics)
        grad_norm = acc.clip_grad_norm_(d.student_model.parameters(), 1.0)
        if not torch.isfinite(grad_norm):
            raise NonFiniteLoss(f"step {step}: gradient norm is {grad_norm.item()}")
        self.optimizer.step()
        self.scheduler.step()
        self.state["step"] += 1
        timings = d.take_timings()
        metrics = self._mean_over_processes({k: float(np.mean([m[k] for m in parts])) for k in parts[0]})
        elapsed = time.perf_counter() - t0
        loss = torch.tensor(float(np.mean(totals))).item()  # logged at float32 precision, as the loss itself
        return dict(metrics, step=self.state["step"], loss=loss, lr=self.scheduler.get_last_lr()[0],
                    grad_norm=float(grad_norm), sample_s=t_sample, fwd_bwd_s=elapsed - t_sample - sum(timings.values()),
                    step_s=elapsed, **timings)

    def _mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        keys = sorted(metrics)
        mean = self.accelerator.reduce(torch.tensor([metrics[k] for k in keys], device=self.accelerator.device), "mean")
        return dict(zip(keys, mean.tolist()))

    # -- after a step (main process)
    def checkpoint(self) -> None:
        """An fp16 snapshot every --snapshot-every steps; the full checkpoint every --save-every and at the end."""
        step, run = self.state["step"], self.run
        params = dict(self.distiller.student_model.named_parameters())
        if run.snapshot_every and step % run.snapshot_every == 0:  # for quality/diversity along training
            save_state({k: v.detach().half() for k, v in params.items()},
                       self.out / "snapshots" / f"step_{step:06d}.safetensors")
        if step % run.save_every == 0 or step == run.steps:
            save_state(params, self.out / "decoder.safetensors")
            save_state(optimizer_tensors(self.optimizer, params), self.out / "optimizer.safetensors")
            state = dict(self.state, scheduler=self.scheduler.state_dict())
            save_json(state, self.out / "state.json")  # last: it marks the checkpoint complete

    def due_for_eval(self, step: int) -> bool:
        every = self.run.eval_every
        return bool(every) and (step % every == 0 or step == self.run.steps)

    def heldout_settings(self) -> HeldoutSettings:
        run = self.run
        return HeldoutSettings(run.eval_prompts, run.eval_samples, self.objective.seconds, run.seed)


def build_distiller(objective: DistillConfig, run: RunSettings, world: int = 1,
                    device: str | torch.device = "cpu") -> tuple[Distiller, Scorers | None]:
    """The distiller (P prompts split over `world` processes) and the evaluation's scorers (None if neither)."""
    base = load_model(run.base, device=device)
    embedder = load_embedder(run.embedding).to(device) if run.embedding else None
    if objective.beta > 0 and objective.reward == "embedding" and embedder is None:
        raise SystemExit("--beta > 0 needs --embedding (the diversity embedding E) or --reward events")
    config = dataclasses.replace(objective, prompts=objective.prompts // world)
    distiller = Distiller(base, config, embedder.embed if embedder is not None else None)
    distiller.autocast = torch.bfloat16 if run.autocast == "bf16" else None
    if run.checkpointing:
        distiller.enable_checkpointing()
    quality = load_quality_scorer(run.quality) if run.quality else None
    scorers = Scorers(embedder, quality) if (embedder is not None or quality is not None) else None
    return distiller, scorers


def run_prompts(run: RunSettings) -> tuple[list[str], list[str]]:
    """Training prompts and held-out evaluation prompts: nano's corpus captions, or a prompts file's
    ({"train": [...], "heldout": [...]}, e.g. `training.recipe_prompts` for a real MusicGen)."""
    if not run.prompts_file:
        return training_prompts(run.seed, TRAINING_PROMPTS), heldout_prompts(run.seed, run.eval_prompts)
    try:
        data = json.loads(Path(run.prompts_file).read_text())
        train_set, held = [str(p) for p in data["train"]], [str(p) for p in data["heldout"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{run.prompts_file}: not a prompts file with 'train' and 'heldout' lists ({e})") from None
    if not train_set or len(held) < run.eval_prompts:
        raise SystemExit(f"{run.prompts_file}: needs training prompts and ≥ {run.eval_prompts} held-out prompts")
    return train_set, held[:run.eval_prompts]


def train(trainer: Trainer) -> None:
    """The loop: steps, logs, evaluations and checkpoints until --steps; stops on a non-finite loss."""
    run, main_proc = trainer.run, trainer.main_proc
    prompts, held = run_prompts(run)
    log = RunLog(trainer.out, trainer.state["step"]) if main_proc else None

    def evaluate(step: int) -> None:
        for row in eval_rows(trainer.distiller, step, held, trainer.heldout_settings(), trainer.scorers):
            log.evaluation(row)

    if main_proc and trainer.state["step"] == 0 and run.eval_every:
        evaluate(0)
    bar = tqdm(total=run.steps, initial=trainer.state["step"], disable=not main_proc, dynamic_ncols=True,
               desc=f"β={trainer.objective.beta:g}")
    try:
        while trainer.state["step"] < run.steps:
            row = trainer.train_step(prompts)
            bar.update(1)
            bar.set_postfix(kl=f"{row['kl']:.3g}", s=f"{row['step_s']:.1f}",
                            **({"reward": f"{row['reward_mean']:.3g}"} if "reward_mean" in row else {}))
            if main_proc:
                log.step(row)
                if trainer.due_for_eval(row["step"]):
                    evaluate(row["step"])
                trainer.checkpoint()
            trainer.accelerator.wait_for_everyone()
    except NonFiniteLoss as e:
        trainer.say(f"{e}; stopping, the last good checkpoint stays in {trainer.out}")
        raise SystemExit(1) from None
    finally:
        bar.close()
        if log is not None:
            log.close()


def main(argv=None) -> None:
    objective, run = parse([DistillConfig, RunSettings], argv, description=__doc__)
    trainer = Trainer(objective, run)
    trainer.resume_or_start()
    train(trainer)


if __name__ == "__main__":
    main()
