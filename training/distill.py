"""Diversity-rewarded CFG distillation, the run: the objective (`training.objective`: Q + β·D, paper Eq. 5) trained
with its optimizer, schedule, processes, checkpoints, logs and held-out evaluation. Rewards: `training.rewards`.

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
import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine import shipped
from engine.checkpoint import (
    CheckpointError,
    optimizer_tensors,
    read_safetensors,
    restore_optimizer,
    save_csv,
    save_json,
    save_state,
)
from engine.embedding import load_embedder
from engine.model import load_model
from engine.scorers import Scorers, load_quality_scorer
from training.corpus import heldout_prompts, training_prompts
from training.heldout import HeldoutSettings, is_readable, measure
from training.objective import DistillConfig, Distiller, teacher_name
from training.rewards import reward_kind
from training.settings import parse, setting

__all__ = ["DistillConfig", "Distiller", "RunSettings", "Trainer", "main", "run", "teacher_name"]
TRAINING_PROMPTS = 1024  # clean training-split captions each step draws its P prompts from


@dataclass
class RunSettings:
    """Models, schedule, evaluation and files of a training run."""

    base: str = setting(shipped.NANO, "base model θ_init (teacher and initial student)")
    init: str | None = setting(None, "start the student from these decoder weights (e.g. weights/theta_q) instead of "
                                     "the base; the teacher stays the base")
    embedding: str = setting(shipped.EMBEDDING, "E for the diversity reward and eval ('' = none)")
    quality: str = setting(shipped.QUALITY, "quality scorer for eval ('' = none)")
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


# ---------------------------------------------------------------- held-out evaluation
LOG_FIELDS = ["step", "loss", "kl", "kl_std", "beta", "entropy", "reward_mean", "reward_std", "advantage_std",
              "log_prob", "lr", "grad_norm", "sample_s", "decode_s", "embed_s", "fwd_bwd_s", "step_s"]
EVAL_FIELDS = ["step", "model", "heldout_kl", "exact_quality", "exact_quality_sem", "exact_adherence", "clean",
               "quality", "quality_sem", "adherence", "adherence_sem", "audio_quality", "audio_quality_sem",
               "diversity", "diversity_sem", "vendi", "vendi_sem",
               "event_diversity", "event_diversity_sem", "sample_s_per_clip"]


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
        models = [("base", distiller.teacher, 1.0), (cfg.teacher.label, distiller.teacher, cfg.guidance)]
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
    if objective.beta > 0 and reward_kind(objective.reward).needs == "embedding" and embedder is None:
        raise SystemExit(f"--beta > 0 with --reward {objective.reward} needs --embedding (the diversity embedding E)")
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


def run(objective: DistillConfig, settings: RunSettings) -> None:
    """Train (or resume) the run `settings.out` to `settings.steps` with this objective."""
    trainer = Trainer(objective, settings)
    trainer.resume_or_start()
    train(trainer)


def main(argv=None) -> None:
    run(*parse([DistillConfig, RunSettings], argv, description=__doc__))


if __name__ == "__main__":
    main()
