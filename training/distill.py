"""Diversity-rewarded CFG distillation (paper Eq. 5): maximise Q + β·D, i.e. minimise KL − β·D.

One step:
  1. P prompts, N samples each, drawn from the student at temperature T (on-policy, our sampler, no top-k);
  2. teacher-forced forwards on those sequences: the student (with gradient) and the frozen base with the
     prompt and the negative prompt as one doubled batch (no second generation);
  3. Q: per-sequence KL(student ‖ CFG teacher) over real positions (training.losses.cfg_distillation_kl);
  4. D (β > 0): decode audio, embed with E, per-sample mean pairwise diversity, baseline, REINFORCE through
     log p_θ(y|x) from the same student forward;
  5. loss = mean KL − β_t · surrogate, β_t warmed up linearly over `beta_warmup` steps.

    python -m training.distill --beta 0 --steps 300 --out runs/theta_q        # θ_q
    python -m training.distill --beta 15 --steps 300 --out runs/theta_d       # θ_d (E from weights/embedding)
    accelerate launch --cpu --num_processes 2 -m training.distill ...         # P prompts split over processes
    python -m training.distill --out runs/theta_q --export weights/theta_q    # fp16 decoder for serving

Logs: CSV (`log.csv`), TensorBoard (`tb/`), tqdm; eval (`eval.csv`) every `--eval-every` steps on held-out
prompts: KL to the CFG teacher, and quality (ω·adherence + audio quality) and diversity (mean r_D, Vendi)
with the shipped scorers, next to the base with and without CFG measured once at step 0.
fp16 snapshots of the student every `--snapshot-every` steps (`snapshots/`) feed quality/diversity along training.
Checkpoints (atomic, every `--save-every` steps): student, optimizer, scheduler; the per-step randomness is
derived from (seed, step, process), so a resumed run draws exactly what an uninterrupted one would.
A non-finite loss or gradient stops the run and keeps the last good checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import time
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
    """Holds the frozen teacher (the base decoder) and the student (a trainable copy).

    `forward_model` is what the loss calls for the student's teacher-forced forward: the student itself, or its
    DistributedDataParallel wrapper under `accelerate` (same weights, gradients all-reduced)."""

    def __init__(self, base: MusicModel, config: DistillConfig, embedder: Embedder | None = None):
        if config.beta > 0 and embedder is None:
            raise ValueError("β > 0 needs a diversity embedding E")
        self.base, self.config, self.embedder = base, config, embedder
        self.teacher = base.decoder  # frozen; FastDecoder forward under no_grad
        # eval mode throughout: no dropout, so that the policy scored is the policy sampled (gradients still flow)
        self.student_model = copy.deepcopy(base.decoder.model).eval()
        self.student = FastDecoder(self.student_model)  # sampling view of the same (trained) weights
        self.forward_model = self.student_model
        self.negative = base.encode_text([config.negative_prompt])
        self.timings: dict[str, float] = {}

    def load_student(self, path) -> None:
        """Copy decoder weights from a safetensors file or folder into the student, in place (the sampler's flat
        buffer stays shared); the checks of `engine.checkpoint.load_state` apply."""
        from engine.checkpoint import load_state

        params = dict(self.student_model.named_parameters())
        with torch.no_grad():
            for name, tensor in load_state(path, params).items():
                params[name].copy_(tensor)

    def _conditions(self, prompts: list[str], n: int) -> TextCondition:
        cond = self.base.encode_text(prompts)
        dev = self.teacher.device
        return TextCondition(cond.hidden.repeat_interleave(n, 0).to(dev), cond.mask.repeat_interleave(n, 0).to(dev),
                             cond.truncated)

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
        student_logits = self.forward_model(input_ids=inputs.reshape(B * K, -1), encoder_hidden_states=cond.hidden,
                                            encoder_attention_mask=cond.mask).logits.view(B, K, -1, self.teacher.vocab_size)
        with torch.no_grad():
            neg = TextCondition(self.negative.hidden.to(codes.device), self.negative.mask.to(codes.device), [False])
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
                t0 = time.perf_counter()
                audio = self.base.codec.decode(codes)
                t1 = time.perf_counter()
                emb = self.embedder(audio, self.base.sample_rate).view(len(prompts), cfg.samples, -1)
                self.timings.update(decode_s=t1 - t0, embed_s=time.perf_counter() - t1)
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


@torch.no_grad()
def evaluate(distiller: Distiller, prompts: list[str], samples: int, seed: int, scorers=None, decoder=None,
             guidance: float = 1.0) -> dict:
    """Quality and diversity of `decoder` (default: the student) on held-out prompts, `samples` clips each,
    sampled as the app does by default (temperature 1, top-k 250), with CFG when guidance > 1."""
    import numpy as np

    cfg, base = distiller.config, distiller.base
    decoder = decoder or distiller.student
    frames = max(1, round(cfg.seconds * base.frame_rate))
    gen = torch.Generator(device=decoder.device).manual_seed(seed)
    params = SamplingParams(temperature=1.0, top_k=250, top_p=0.0)
    quality, diversity, vendi, adherence, clean = [], [], [], [], []
    t = time.perf_counter()
    for prompt in prompts:
        neg = distiller.negative if guidance > 1 else None
        codes = generate_codes(decoder, base.encode_text([prompt]), samples, frames, params, gen, neg=neg,
                               guidance=guidance if guidance > 1 else None).codes
        if scorers is None:
            continue
        s = scorers.score(base.codec.decode(codes).cpu(), base.sample_rate, prompt)
        if s.mean_diversity is not None:
            diversity.append(s.mean_diversity)
            vendi.append(s.vendi)
        if s.quality is not None:
            quality.extend(s.quality)
            adherence.extend(s.adherence)
            clean.extend(s.audio_quality)
    out = dict(gen_s_per_clip=(time.perf_counter() - t) / (len(prompts) * samples))
    for name, xs in (("quality", quality), ("adherence", adherence), ("audio_quality", clean),
                     ("diversity", diversity), ("vendi", vendi)):
        if xs:
            xs = np.asarray(xs, dtype=float)
            out[name] = float(xs.mean())
            out[name + "_sem"] = float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0
    return out


@torch.no_grad()
def eval_rows(distiller: Distiller, step: int, prompts: list[str], samples: int, seed: int, scorers=None) -> list[dict]:
    """Eval rows at `step`: the student, or at step 0 the references (base without and with the teacher's CFG).
    Each row: quality/diversity from `evaluate` and, except for the CFG teacher, the held-out KL to the teacher."""
    cfg = distiller.config
    teacher_name = f"base+CFG γ={cfg.guidance:g}"
    models = [("student", distiller.student, 1.0)]
    started_from_base = torch.equal(distiller.student.flat, distiller.teacher.flat)
    if step == 0:  # the references; the student too when it starts elsewhere (--init)
        models = [("base", distiller.teacher, 1.0), (teacher_name, distiller.teacher, cfg.guidance)]
        models += [] if started_from_base else [("student", distiller.student, 1.0)]
    rows = []
    for name, decoder, gamma in models:
        row = dict(step=step, model=name, **evaluate(distiller, prompts, samples, seed, scorers, decoder, gamma))
        # the held-out KL is the student's: it is the base's only while the student is still the base
        if name == "student" or (name == "base" and started_from_base):
            gen = torch.Generator(device=distiller.teacher.device).manual_seed(seed)
            wrapped, distiller.forward_model = distiller.forward_model, distiller.student_model  # no DDP collectives
            try:
                row["heldout_kl"] = distiller.step_loss(prompts[:cfg.prompts], step, gen)[1]["kl"]
            finally:
                distiller.forward_model = wrapped
        rows.append(row)
    return rows


def eval_snapshots(out, distiller: Distiller, prompts: list[str], samples: int, seed: int, scorers) -> list[dict]:
    """Re-evaluate a run after the fact (e.g. with newer scorers): the references and the run's starting student
    (the base, or its `--init` weights as recorded in `out/config.json`), then every snapshot in `out/snapshots`;
    rewrites `out/eval.csv`. The student's weights end at the last snapshot."""
    import csv
    import io
    import json
    from pathlib import Path

    from engine.checkpoint import save_bytes

    out = Path(out)
    params = dict(distiller.student_model.named_parameters())
    student = {k: v.detach().clone() for k, v in params.items()}
    config = out / "config.json"
    init = json.loads(config.read_text()).get("init") if config.exists() else None
    if init:
        distiller.load_student(init)
    else:
        with torch.no_grad():  # the student started as a copy of the base
            for name, p in distiller.teacher.model.named_parameters():
                params[name].copy_(p)
    rows = eval_rows(distiller, 0, prompts, samples, seed, scorers)
    for snap in sorted((out / "snapshots").glob("step_*.safetensors")):
        distiller.load_student(snap)
        rows += eval_rows(distiller, int(snap.stem.split("_")[1]), prompts, samples, seed, scorers)
        print(f"evaluated {snap.name}", flush=True)
    if not (out / "snapshots").is_dir():
        with torch.no_grad():
            for name, t in student.items():
                params[name].copy_(t)
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=EVAL_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    save_bytes(text.getvalue().encode(), out / "eval.csv")
    return rows


def _save(out, distiller, optimizer, scheduler, state) -> None:
    from engine.checkpoint import optimizer_tensors, save_json, save_state

    params = dict(distiller.student_model.named_parameters())
    save_state(params, out / "decoder.safetensors")
    save_state(optimizer_tensors(optimizer, params), out / "optimizer.safetensors")
    save_json(dict(state, scheduler=scheduler.state_dict()), out / "state.json")  # last: it marks the checkpoint complete


def _resume(out, distiller, optimizer, scheduler) -> dict:
    import json

    from engine.checkpoint import CheckpointError, read_safetensors, restore_optimizer

    params = dict(distiller.student_model.named_parameters())
    try:
        state = json.loads((out / "state.json").read_text())
        sched = state.pop("scheduler")
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{out / 'state.json'}: not a readable training state ({e})") from None
    distiller.load_student(out / "decoder.safetensors")
    restore_optimizer(optimizer, params, read_safetensors(out / "optimizer.safetensors"))
    scheduler.load_state_dict(sched)
    return state


def _drop_rows_after(path, step: int) -> None:
    """Keep the header and the rows of steps ≤ `step` of a CSV log (atomically; nothing to do if absent)."""
    import csv
    import io

    from engine.checkpoint import save_bytes

    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
    if len(kept) != len(rows):
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        save_bytes(text.getvalue().encode(), path)


LOG_FIELDS = ["step", "loss", "kl", "kl_std", "beta", "entropy", "reward_mean", "reward_std", "advantage_std",
              "log_prob", "lr", "grad_norm", "sample_s", "decode_s", "embed_s", "fwd_bwd_s", "step_s"]
EVAL_FIELDS = ["step", "model", "heldout_kl", "quality", "quality_sem", "adherence", "adherence_sem", "audio_quality",
               "audio_quality_sem", "diversity", "diversity_sem", "vendi", "vendi_sem", "gen_s_per_clip"]


def main(argv=None) -> None:
    import argparse
    import csv
    from pathlib import Path

    import numpy as np
    from accelerate import Accelerator
    from tqdm import tqdm

    from engine.checkpoint import copy_as_fp16, save_json, save_state

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    p.add_argument("--base", default="weights/nano", help="base model θ_init (teacher and initial student)")
    p.add_argument("--init", default=None,
                   help="start the student from these decoder weights (e.g. weights/theta_q) instead of the base; "
                        "the teacher stays the base")
    p.add_argument("--embedding", default="weights/embedding", help="E for the diversity reward and eval ('' = none)")
    p.add_argument("--quality", default="weights/quality", help="quality scorer for eval ('' = none)")
    # objective
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--beta-warmup", type=int, default=100)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    p.add_argument("--temperature", type=float, default=0.99)
    p.add_argument("--baseline", default="loo", choices=["loo", "batch"])
    # optimisation
    p.add_argument("--prompts", type=int, default=8, help="P prompts per step, over all processes")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--accumulate", type=int, default=1,
                   help="micro-batches of --prompts × --samples per optimizer step (gradient accumulation): the "
                        "REINFORCE gradient of one 32-sample batch is mostly noise (training.grad_snr)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1.5e-4)
    p.add_argument("--lr-warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    # run
    p.add_argument("--out", default="runs/distill")
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--snapshot-every", type=int, default=50, help="keep an fp16 copy of the student every N steps")
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    p.add_argument("--export", default=None, help="only write the run's student as fp16 safetensors here and exit")
    p.add_argument("--eval-snapshots", action="store_true",
                   help="only re-evaluate the run's snapshots with the given scorers (rewrites eval.csv) and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.export:
        copy_as_fp16(out / "decoder.safetensors", Path(args.export) / "decoder.safetensors")
        return

    import os

    from engine.embedding import load_embedder
    from engine.model import load_model
    from engine.scorers import Scorers

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU-only: gloo when launched with several processes
    rank, world, main_proc = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    if args.accumulate < 1:
        raise SystemExit(f"--accumulate must be ≥ 1, got {args.accumulate}")
    if args.prompts % world:
        raise SystemExit(f"--prompts {args.prompts} must be a multiple of the {world} processes")
    cfg = DistillConfig(args.beta, args.beta_warmup, args.guidance, args.negative_prompt, args.temperature,
                        args.prompts // world, args.samples, args.baseline, args.seconds, args.lr)
    base = load_model(args.base, device=accelerator.device)
    embedder = load_embedder(args.embedding).to(accelerator.device) if args.embedding else None
    if cfg.beta > 0 and embedder is None:
        raise SystemExit("--beta > 0 needs --embedding (the diversity embedding E)")
    distiller = Distiller(base, cfg, embedder.embed if embedder is not None else None)
    optimizer = torch.optim.AdamW(distiller.student_model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, args.lr_warmup)))
    state = dict(step=0)
    if (out / "state.json").exists():
        state = _resume(out, distiller, optimizer, scheduler)
        if main_proc:
            print(f"resumed at step {state['step']}")
    else:
        if args.init:
            distiller.load_student(args.init)
        if main_proc:
            out.mkdir(parents=True, exist_ok=True)
            save_json(dict(vars(args), processes=world), out / "config.json")
    if args.eval_snapshots:
        if main_proc:
            scorers = Scorers(embedder, load_quality_from(args.quality)) if (args.embedding or args.quality) else None
            eval_snapshots(out, distiller, heldout_prompts(args.seed, args.eval_prompts), args.eval_samples, args.seed,
                           scorers)
        return
    distiller.forward_model = accelerator.prepare(distiller.student_model)  # DDP when world > 1
    prompts = training_prompts(args.seed, 1024)
    held = heldout_prompts(args.seed, args.eval_prompts)
    scorers = None
    if main_proc and (args.embedding or args.quality):
        scorers = Scorers(embedder, load_quality_from(args.quality))

    writer = log = eval_log = None
    if main_proc:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=state["step"] + 1)
        for name in ("log.csv", "eval.csv"):  # rows logged after the checkpoint we resume from are redone: drop them
            _drop_rows_after(out / name, state["step"])
        files = [open(out / name, "a", newline="") for name in ("log.csv", "eval.csv")]
        log = csv.DictWriter(files[0], fieldnames=LOG_FIELDS, extrasaction="ignore")
        eval_log = csv.DictWriter(files[1], fieldnames=EVAL_FIELDS, extrasaction="ignore")
        if state["step"] == 0:
            log.writeheader()
            eval_log.writeheader()

    def run_eval(step: int) -> None:
        for row in eval_rows(distiller, step, held, args.eval_samples, args.seed, scorers):
            eval_log.writerow(row)
            files[1].flush()
            for k, v in row.items():
                if isinstance(v, float):
                    writer.add_scalar(f"eval_{row['model']}/{k}", v, step)
            tqdm.write(f"eval step {step} {row['model']}: "
                       + " ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))

    if main_proc and state["step"] == 0 and args.eval_every:
        with torch.no_grad():
            run_eval(0)
    bar = tqdm(total=args.steps, initial=state["step"], disable=not main_proc, desc=f"β={cfg.beta:g}", dynamic_ncols=True)
    while state["step"] < args.steps:
        step = state["step"]
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        t_sample, totals, parts, timings = 0.0, [], [], dict(decode_s=0.0, embed_s=0.0)
        for micro in range(args.accumulate):
            # per-(step, micro-batch) randomness, the same on every process: resume is exact
            rng = np.random.default_rng([args.seed, step] if args.accumulate == 1 else [args.seed, step, micro])
            batch = [prompts[i] for i in rng.choice(len(prompts), args.prompts, replace=False)][rank::world]
            gen = torch.Generator(device=distiller.teacher.device).manual_seed(int(rng.integers(2**62)) + rank)
            t1 = time.perf_counter()
            codes = distiller.sample(batch, gen)
            t_sample += time.perf_counter() - t1
            distiller.timings = dict(decode_s=0.0, embed_s=0.0)
            last = micro == args.accumulate - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(distiller.forward_model):
                loss, metrics = distiller.loss_on(codes, batch, step)
                total = accelerator.reduce(loss.detach().clone(), "mean")
                if not torch.isfinite(total):
                    bar.close()
                    if main_proc:
                        print(f"step {step}: loss is {total.item()}; stopping, the last good checkpoint stays in {out}")
                    raise SystemExit(1)
                accelerator.backward(loss / args.accumulate)
            totals.append(total.item())
            parts.append(metrics)
            for k, v in distiller.timings.items():
                timings[k] += v
        metrics = {k: float(np.mean([m[k] for m in parts])) for k in parts[0]}
        distiller.timings = timings
        total = torch.tensor(float(np.mean(totals)))
        grad_norm = accelerator.clip_grad_norm_(distiller.student_model.parameters(), 1.0)
        if not torch.isfinite(grad_norm):
            bar.close()
            if main_proc:
                print(f"step {step}: gradient norm is {grad_norm.item()}; stopping, the last good checkpoint stays in {out}")
            raise SystemExit(1)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        keys = sorted(metrics)
        mean = accelerator.reduce(torch.tensor([metrics[k] for k in keys], device=accelerator.device), "mean")
        row = dict(zip(keys, mean.tolist()), step=state["step"], loss=total.item(), lr=scheduler.get_last_lr()[0],
                   grad_norm=float(grad_norm), sample_s=t_sample, fwd_bwd_s=time.perf_counter() - t0 - t_sample
                   - sum(distiller.timings.values()), step_s=time.perf_counter() - t0, **distiller.timings)
        bar.update(1)
        if main_proc:
            log.writerow(row)
            files[0].flush()
            for k, v in row.items():
                if k != "step":
                    writer.add_scalar(f"train/{k}", v, state["step"])
            bar.set_postfix(kl=f"{row['kl']:.3g}", **({"reward": f"{row['reward_mean']:.3g}"} if "reward_mean" in row else {}),
                            s=f"{row['step_s']:.1f}")
            if args.eval_every and (state["step"] % args.eval_every == 0 or state["step"] == args.steps):
                with torch.no_grad():
                    run_eval(state["step"])
            if args.snapshot_every and state["step"] % args.snapshot_every == 0:  # for quality/diversity along training
                save_state({k: v.detach().half() for k, v in distiller.student_model.named_parameters()},
                           out / "snapshots" / f"step_{state['step']:06d}.safetensors")
            if state["step"] % args.save_every == 0 or state["step"] == args.steps:
                _save(out, distiller, optimizer, scheduler, state)
        accelerator.wait_for_everyone()
    bar.close()
    if main_proc:
        writer.close()
        for f in files:
            f.close()


def load_quality_from(folder):
    from engine.scorers import load_quality_scorer

    return load_quality_scorer(folder) if folder else None


if __name__ == "__main__":
    main()
