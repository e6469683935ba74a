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

    python -m training.train_scorers --out runs/scorers --steps 1500
    python -m training.export scorers runs/scorers weights/quality
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoint import copy_as_fp16, save_json, save_state
from engine.score_codec import FRAME_RATE
from engine.scorers import QUALITY_CONFIG, QUALITY_WEIGHTS, QualityConfig, QualityScorer, SentenceEncoder
from training.corpus import (
    BAD_CAPTIONS,
    HELD_OUT_EVERY,
    codecs,
    generate_piece,
    possible_captions,
    render,
    split_of,
)
from training.settings import parse, setting
from training.train_embedding import TowerSettings, cosine_schedule, tower

LOGGED = ("adherence_top1", "adherence_top1_false_distractors", "quality_auc")


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties count ½."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("ROC AUC needs both classes")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def soft_clip_loss(audio: torch.Tensor, text: torch.Tensor, positives: torch.Tensor,
                   scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss, unit audio (B, D) vs unit text (B, D). positives (B, B), bool or weights ≥ 0:
    caption j is true of clip i (the diagonal at least); each clip's target spreads over its true captions, each
    caption's over its clips, in proportion to the weights."""
    logits = scale * audio @ text.T
    p = positives.float()
    return (F.cross_entropy(logits, p / p.sum(1, keepdim=True)) + F.cross_entropy(logits.T, (p / p.sum(0)).T)) / 2


def true_captions(piece) -> set[str]:
    """Every caption the corpus could give this piece: its own, every wording of its attributes, or, if degraded,
    every bad-audio caption."""
    return {piece.caption} | (set(BAD_CAPTIONS) if piece.attributes["degraded"]
                              else possible_captions(piece.attributes))


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


@dataclass(frozen=True)
class ScorerSettings:
    seed: int = setting(0, "corpus and initialisation seed")
    renderer: str = setting("synth", "how the corpus sounds: synth (the wavetable synthesiser, mono 16 kHz, as the "
                                     "shipped E and scorers until issue 27) or soundfont (the app's default: GM "
                                     "instruments, loudness-normalised, mixed to mono)")
    soundfont: str | None = setting(None, "the .sf2/.sf3 bank(s) for --renderer soundfont, comma-separated: pieces "
                                                   "alternate between them (default: the best installed)")
    pool: int = setting(3000, "training pieces rendered once, reused with new gains")
    heldout: int = setting(400, "held-out pieces of the eval")
    distractors: int = setting(10, "captions each held-out clip's own caption competes with")
    init_audio: str | None = setting(None, "start the audio tower from this E folder (its architecture replaces the "
                                           "tower flags): it then starts from what E knows of genre, groove, "
                                           "instruments")
    batch: int = setting(64, "pieces per step")
    lr: float = setting(5e-4, "peak learning rate")
    warmup: int = setting(100, "steps of linear warm-up")
    steps: int = setting(1500, "optimizer steps")
    out: str = setting("runs/scorers", "run folder")
    eval_every: int = setting(100, "eval and save every N steps")
    true_positives: bool = setting(False, "every caption in the batch that is true of a clip is its positive (corpus "
                                          "attributes), not only captions with the same text: a generic caption "
                                          "(\"Rock.\") is then not pushed away from the other rock clips")
    other_true_weight: float = setting(1.0, "with --true-positives: target weight of a true caption with another "
                                            "text, relative to the clip's own caption text (1: all true captions "
                                            "alike; < 1: the clip's own wording preferred)")

    def __post_init__(self):
        if min(self.pool, self.heldout, self.distractors, self.batch, self.warmup, self.steps, self.eval_every) < 1:
            raise ValueError("pool, heldout, distractors, batch, warmup, steps and eval_every must be ≥ 1")
        if self.batch > self.pool:
            raise ValueError(f"batch {self.batch} is larger than the pool of {self.pool} pieces")
        if not self.other_true_weight >= 0:
            raise ValueError(f"other_true_weight must be ≥ 0, got {self.other_true_weight}")


@dataclass
class ScorerData:
    """Rendered training and held-out pieces with their captions' sentence features."""

    pool: torch.Tensor  # (pool, samples)
    captions: list[str]
    text_feats: torch.Tensor
    caption_ids: torch.Tensor  # same id = same caption text
    truths: list[set[str]] | None  # per training piece, every caption true of it (with --true-positives)
    clean_label: torch.Tensor  # 1 = not degraded
    held_audio: torch.Tensor
    held_captions: list[str]
    held_feats: torch.Tensor
    held_truths: list[set[str]]
    held_degraded: np.ndarray

    def positives(self, idx: torch.Tensor, other_true_weight: float) -> torch.Tensor:
        """(B, B) targets of the batch `idx`: same caption text, or (with truths) every true caption, weighted."""
        if self.truths is None:
            return self.caption_ids[idx][:, None] == self.caption_ids[idx][None, :]
        c, t = self.captions, self.truths
        return torch.tensor([[1.0 if c[j] == c[i] else other_true_weight * (c[j] in t[i]) for j in idx.tolist()]
                             for i in idx.tolist()])


def load_data(s: ScorerSettings, window_s: float, sample_rate: int) -> ScorerData:
    frames = int(2 * window_s * FRAME_RATE)
    t0 = time.time()
    train = [generate_piece(s.seed, i, frames) for i in range(s.pool * 2) if split_of(i) == "train"][:s.pool]
    held = [generate_piece(s.seed, i * HELD_OUT_EVERY, frames) for i in range(s.heldout)]
    codec = codecs(s.renderer, s.soundfont)
    sentences = SentenceEncoder()
    captions, held_captions = [pc.caption for pc in train], [pc.caption for pc in held]
    data = ScorerData(render(train, codec, sample_rate=sample_rate), captions, sentences(captions),
                      torch.as_tensor(np.unique(captions, return_inverse=True)[1]),
                      [true_captions(pc) for pc in train] if s.true_positives else None,
                      torch.tensor([0.0 if pc.attributes["degraded"] else 1.0 for pc in train]),
                      render(held, codec, sample_rate=sample_rate), held_captions, sentences(held_captions),
                      [true_captions(pc) for pc in held], np.array([pc.attributes["degraded"] for pc in held]))
    print(f"rendered {len(train)} + {len(held)} pieces, {int(data.caption_ids.max()) + 1} distinct captions, "
          f"{data.held_degraded.sum()} degraded held out, in {time.time() - t0:.0f} s", flush=True)
    return data


def scorer_loss(model: QualityScorer, data: ScorerData, s: ScorerSettings, step: int) -> tuple[torch.Tensor, ...]:
    """(loss, contrastive part, BCE part) of one batch, each piece at a random gain (±6 dB)."""
    w = model.config.audio.window_samples
    rng = np.random.default_rng([s.seed, step])
    idx = torch.as_tensor(rng.choice(len(data.pool), s.batch, replace=False))
    gain = torch.as_tensor(10 ** (rng.uniform(-6, 6, size=(s.batch, 1)) / 20), dtype=torch.float32)
    audio_emb, clean = model.clips((data.pool[idx, :2 * w] * gain).reshape(-1, w), 2)
    scale = model.logit_scale.exp().clamp(max=100)
    clip_loss = soft_clip_loss(audio_emb, model.text(data.text_feats[idx]),
                               data.positives(idx, s.other_true_weight), scale)
    bce = F.binary_cross_entropy_with_logits(clean, data.clean_label[idx])
    return clip_loss + bce, clip_loss, bce


def train(s: ScorerSettings, tower_settings: TowerSettings) -> None:
    torch.manual_seed(s.seed)
    config, state = tower(tower_settings, s.init_audio)
    model = QualityScorer(QualityConfig(audio=config))
    if state is not None:
        model.audio.load_state_dict(state)
    data = load_data(s, model.config.audio.window_s, model.config.audio.sample_rate)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01)
    sched = cosine_schedule(opt, s.warmup, s.steps)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(dict(dataclasses.asdict(tower_settings), **dataclasses.asdict(s), config=model.config_dict()),
              out / QUALITY_CONFIG)
    with open(out / "log.csv", "w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(["step", "loss", "clip_loss", "bce", *LOGGED, "step_s"])
        for step in range(1, s.steps + 1):
            t = time.time()
            loss, clip_loss, bce = scorer_loss(model, data, s, step)
            if not torch.isfinite(loss):
                raise SystemExit(f"step {step}: loss is {loss.item()}; stopping, the last good model is in {out}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            metrics = {}
            if step % s.eval_every == 0 or step == s.steps:
                metrics = eval_and_save(model, data, s, out / QUALITY_WEIGHTS)
                print(f"step {step} loss {loss.item():.4f} adherence top-1 {metrics['adherence_top1']:.3f} "
                      f"(false distractors {metrics['adherence_top1_false_distractors']:.3f}) "
                      f"quality AUC {metrics['quality_auc']:.3f}", flush=True)
            log.writerow([step, f"{loss.item():.4f}", f"{clip_loss.item():.4f}", f"{bce.item():.4f}",
                          *(f"{metrics[k]:.3f}" if metrics else "" for k in LOGGED), f"{time.time() - t:.2f}"])
            log_file.flush()


def eval_and_save(model: QualityScorer, data: ScorerData, s: ScorerSettings, path: Path) -> dict:
    model.eval()
    metrics = evaluate(model, data.held_audio, data.held_captions, data.held_degraded, data.held_feats,
                       s.distractors, s.seed, data.held_truths)
    model.train()
    save_state(dict(model.state_dict()), path)
    return metrics


def export(run: Path, dest: Path) -> None:
    """The shipped quality folder: fp16 weights and the run's model.json."""
    copy_as_fp16(run / QUALITY_WEIGHTS, dest / QUALITY_WEIGHTS)
    save_json(json.loads((run / QUALITY_CONFIG).read_text()), dest / QUALITY_CONFIG)


def main(argv=None) -> None:
    settings, tower_settings = parse([ScorerSettings, TowerSettings], argv, description=__doc__)
    train(settings, tower_settings)


if __name__ == "__main__":
    main()
