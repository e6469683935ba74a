"""Train the nano quality scorers (adherence + audio quality, `engine.scorers.QualityScorer`) on the corpus.

Data: 8 s corpus pieces (two 4 s windows each), rendered once, with their captions and their degraded flag.
Each step draws a batch, changes each piece's gain (±6 dB, so that loudness is not a quality cue), and minimises
- a CLIP-style contrastive loss between clip embeddings and their captions' projected MiniLM features, where
  pieces in the batch that share a caption text are all positives of each other (soft targets; with
  `--true-positives`, every caption in the batch that is true of a clip, by the corpus attributes), plus
- binary cross-entropy of the clip's clean logit (the worst window's) against "clean, not degraded".
Eval on held-out pieces (never trained on):
- adherence top-1: for each clean held-out clip, its caption against `--distractors` captions of other held-out
  clean clips with a different text; top-1 = the true caption scores highest; also against captions that are
  false for the clip only;
- audio-quality ROC AUC, clean vs degraded, over all held-out clips.

    python -m training.train_scorers --out runs/scorers --steps 1500       # then --export weights/quality
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoint import copy_as_fp16, save_json, save_state
from engine.score_codec import FRAME_RATE, ScoreCodec
from engine.scorers import QUALITY_CONFIG, QUALITY_WEIGHTS, QualityConfig, QualityScorer, SentenceEncoder
from training.corpus import BAD_CAPTIONS, HELD_OUT_EVERY, generate_piece, possible_captions, render, split_of
from training.train_embedding import add_tower_args, tower_from_args


LOGGED = ("adherence_top1", "adherence_top1_false_distractors", "quality_auc")


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties count ½."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("ROC AUC needs both classes")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def soft_clip_loss(audio: torch.Tensor, text: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss, unit audio (B, D) vs unit text (B, D). positives (B, B), bool or weights ≥ 0:
    caption j is true of clip i (the diagonal at least); each clip's target spreads over its true captions, each
    caption's over its clips, in proportion to the weights."""
    logits = scale * audio @ text.T
    p = positives.float()
    return (F.cross_entropy(logits, p / p.sum(1, keepdim=True)) + F.cross_entropy(logits.T, (p / p.sum(0)).T)) / 2


def true_captions(piece) -> set[str]:
    """Every caption the corpus could give this piece: its own, every wording of its attributes, or, if degraded,
    every bad-audio caption."""
    return {piece.caption} | (set(BAD_CAPTIONS) if piece.attributes["degraded"] else possible_captions(piece.attributes))


@torch.no_grad()
def caption_top1(model: QualityScorer, audio_emb: torch.Tensor, captions: list[str], text_feats: torch.Tensor,
                 distractors: int, seed: int, truths: list[set[str]] | None = None) -> float:
    """How often a clip's own caption beats `distractors` different captions of other clips (unit audio_emb (N, D)).
    With `truths` (per clip, every caption that is true of it: `corpus.possible_captions`), distractors are only
    other clips' captions that are false for this clip, so that a generic caption that also fits ("Rock.") is
    never counted against it."""
    t = model.text(text_feats)
    hits = []
    for i, pick in enumerate(distractor_picks(captions, distractors, seed, truths)):
        sims = t[np.concatenate([[i], pick])] @ audio_emb[i]
        hits.append(bool(sims[0] > sims[1:].max()))
    return float(np.mean(hits))


def distractor_picks(captions: list[str], distractors: int, seed: int, truths: list[set[str]] | None = None):
    """For each clip i, the indices of the clips whose captions are its distractors (see `caption_top1`)."""
    rng = np.random.default_rng(seed)
    for i in range(len(captions)):
        true = {captions[i]} | (truths[i] if truths is not None else set())
        others = [j for j in range(len(captions)) if captions[j] not in true]
        yield rng.choice(others, size=min(distractors, len(others)), replace=False)


def adherence_ceiling(captions: list[str], distractors: int, seed: int, truths: list[set[str]]) -> float:
    """The best expected `caption_top1` without `truths` (any other caption is a distractor, the same draws) of a
    scorer that tells every true caption from every false one but cannot prefer the clip's own caption to another
    caption that is also true of it: mean over clips of 1 / (1 + distractors true of the clip)."""
    return float(np.mean([1 / (1 + sum(captions[j] in truths[i] for j in pick))
                          for i, pick in enumerate(distractor_picks(captions, distractors, seed))]))


@torch.no_grad()
def evaluate(model: QualityScorer, audio: torch.Tensor, captions: list[str], degraded: np.ndarray,
             text_feats: torch.Tensor, distractors: int, seed: int, truths: list[set[str]] | None = None) -> dict:
    """Adherence top-1 (and, given `truths`, against false distractors only) on the clean clips; ROC AUC."""
    w = model.config.audio.window_samples
    e, clean = [], []
    for j in range(0, len(audio), 64):
        a, c = model.clips(audio[j:j + 64, :2 * w].reshape(-1, w), 2)
        e.append(a)
        clean.append(c)
    e, clean = torch.cat(e), torch.cat(clean)
    ok = np.flatnonzero(~degraded)
    args = (model, e[ok], [captions[i] for i in ok], text_feats[ok], distractors, seed)
    out = dict(adherence_top1=caption_top1(*args), quality_auc=roc_auc(-clean.numpy(), degraded))
    if truths is not None:
        out["adherence_top1_false_distractors"] = caption_top1(*args, [truths[i] for i in ok])
        out["adherence_top1_ceiling"] = adherence_ceiling(args[2], distractors, seed, [truths[i] for i in ok])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=3000, help="training pieces rendered once, reused with new gains")
    p.add_argument("--heldout", type=int, default=400)
    p.add_argument("--distractors", type=int, default=10)
    add_tower_args(p, "--init-audio", "The audio tower then starts from what E knows of genre, groove, instruments.")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out", default="runs/scorers")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--true-positives", action="store_true",
                   help="every caption in the batch that is true of a clip is its positive (corpus attributes), not "
                        "only captions with the same text: a generic caption (\"Rock.\") is then not pushed away "
                        "from the other rock clips")
    p.add_argument("--other-true-weight", type=float, default=1.0,
                   help="with --true-positives: target weight of a true caption with another text, relative to the "
                        "clip's own caption text (1: all true captions alike; < 1: the clip's own wording preferred)")
    p.add_argument("--export", default=None, help="only write the run's model to this folder and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.export:
        dest = Path(args.export)
        copy_as_fp16(out / QUALITY_WEIGHTS, dest / QUALITY_WEIGHTS)
        save_json(json.loads((out / QUALITY_CONFIG).read_text()), dest / QUALITY_CONFIG)
        return

    torch.manual_seed(args.seed)
    config, state = tower_from_args(args, args.init_audio)
    model = QualityScorer(QualityConfig(audio=config))
    if state is not None:
        model.audio.load_state_dict(state)
    w = model.config.audio.window_samples
    frames = int(2 * model.config.audio.window_s * FRAME_RATE)
    t0 = time.time()
    train = [generate_piece(args.seed, i, frames) for i in range(args.pool * 2) if split_of(i) == "train"][:args.pool]
    held = [generate_piece(args.seed, i * HELD_OUT_EVERY, frames) for i in range(args.heldout)]
    codec = ScoreCodec()
    pool, held_audio = render(train, codec), render(held, codec)
    sentences = SentenceEncoder()
    captions = [pc.caption for pc in train]
    text_feats, held_feats = sentences(captions), sentences([pc.caption for pc in held])
    caption_ids = torch.as_tensor(np.unique(captions, return_inverse=True)[1])
    truths = [true_captions(pc) for pc in train] if args.true_positives else None
    held_truths = [true_captions(pc) for pc in held]
    clean_label = torch.tensor([0.0 if pc.attributes["degraded"] else 1.0 for pc in train])
    held_degraded = np.array([pc.attributes["degraded"] for pc in held])
    print(f"rendered {len(pool)} + {len(held)} pieces, {int(caption_ids.max()) + 1} distinct captions, "
          f"{held_degraded.sum()} degraded held out, in {time.time() - t0:.0f} s", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup)
                                              * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)))
    out.mkdir(parents=True, exist_ok=True)
    save_json(dict(vars(args), config=model.config_dict()), out / QUALITY_CONFIG)
    log_file = open(out / "log.csv", "w", newline="")
    log = csv.writer(log_file)
    log.writerow(["step", "loss", "clip_loss", "bce", *LOGGED, "step_s"])
    for step in range(1, args.steps + 1):
        t = time.time()
        rng = np.random.default_rng([args.seed, step])
        idx = torch.as_tensor(rng.choice(len(pool), args.batch, replace=False))
        gain = torch.as_tensor(10 ** (rng.uniform(-6, 6, size=(args.batch, 1)) / 20), dtype=torch.float32)
        audio_emb, clean = model.clips((pool[idx, :2 * w] * gain).reshape(-1, w), 2)
        scale = model.logit_scale.exp().clamp(max=100)
        if truths is None:
            positives = caption_ids[idx][:, None] == caption_ids[idx][None, :]
        else:
            positives = torch.tensor([[1.0 if captions[j] == captions[i] else args.other_true_weight * (captions[j] in truths[i])
                                       for j in idx.tolist()] for i in idx.tolist()])
        clip_loss = soft_clip_loss(audio_emb, model.text(text_feats[idx]), positives, scale)
        bce = F.binary_cross_entropy_with_logits(clean, clean_label[idx])
        loss = clip_loss + bce
        if not torch.isfinite(loss):
            raise SystemExit(f"step {step}: loss is {loss.item()}; stopping, the last good model is in {out}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        metrics = {}
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            metrics = evaluate(model, held_audio, [pc.caption for pc in held], held_degraded, held_feats,
                               args.distractors, args.seed, held_truths)
            model.train()
            save_state(dict(model.state_dict()), out / QUALITY_WEIGHTS)
            print(f"step {step} loss {loss.item():.4f} adherence top-1 {metrics['adherence_top1']:.3f} "
                  f"(false distractors {metrics['adherence_top1_false_distractors']:.3f}) "
                  f"quality AUC {metrics['quality_auc']:.3f}", flush=True)
        log.writerow([step, f"{loss.item():.4f}", f"{clip_loss.item():.4f}", f"{bce.item():.4f}",
                      *(f"{metrics[k]:.3f}" if metrics else "" for k in LOGGED), f"{time.time() - t:.2f}"])
        log_file.flush()


if __name__ == "__main__":
    main()
