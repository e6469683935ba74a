"""Train E, the diversity embedding, by self-supervised contrast on rendered corpus audio (Appendix C.1).

Positives: the two non-overlapping 4 s halves of one 8 s piece. Negatives: chunks of the other pieces in
the batch. Each chunk is augmented independently (noise at a random SNR, gain, speed change = tempo and
pitch shift by resampling), so that E ignores loudness and noise and keys on musical content.
Loss (`--loss`): symmetric InfoNCE over the batch (default: every other chunk in the batch is a negative, all at
once, which trains much faster than triplets here) or the paper's semi-hard triplet loss on cosine distance
(FaceNet: for each anchor–positive pair, the closest negative that is still farther than the positive, else the
hardest negative).
Eval: same-source retrieval: held-out first halves find their second half among `--eval-candidates`.

    python -m training.train_embedding --out runs/embedding --steps 800
    python -m training.export embedding runs/embedding weights/embedding
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
import torchaudio.functional as AF

from engine.checkpoint import copy_as_fp16, save_json, save_state
from engine.embedding import AudioEmbedder, EmbeddingConfig, load_embedder
from engine.score_codec import FRAME_RATE, ScoreCodec
from training.corpus import HELD_OUT_EVERY, codecs, generate_piece, render, split_of
from training.settings import parse, setting


def render_pool(seed: int, indices: list[int], seconds: float, codec: ScoreCodec | list[ScoreCodec],
                sample_rate: int) -> tuple[torch.Tensor, np.ndarray]:
    """(len(indices), samples) audio of corpus pieces at `sample_rate`, and each piece's genre."""
    pieces = [generate_piece(seed, i, int(seconds * FRAME_RATE)) for i in indices]
    return render(pieces, codec, sample_rate=sample_rate), np.array([pc.attributes["genre"] for pc in pieces])


def batch_indices(rng: np.random.Generator, genres: np.ndarray, batch: int, one_genre: bool) -> np.ndarray:
    """Rows of the pool for one batch: uniformly at random, or (hard negatives) all from one random genre, so
    that the in-batch negatives differ from the positives only in key, tempo, instruments, melody and chords."""
    if not one_genre:
        return rng.choice(len(genres), batch, replace=False)
    names, counts = np.unique(genres, return_counts=True)
    names = names[counts >= batch]
    if len(names) == 0:
        raise ValueError(f"no genre has {batch} pieces in the pool; use a larger --pool or a smaller --batch")
    rows = np.flatnonzero(genres == rng.choice(names))
    return rng.choice(rows, batch, replace=False)


@dataclass(frozen=True)
class TowerSettings:
    """The audio tower's architecture (E's and the quality scorer's), used when not starting from an E folder."""

    dim: int = setting(128, "transformer width")
    layers: int = setting(4, "transformer layers")
    heads: int = setting(4, "attention heads")
    n_mels: int = setting(64, "mel bands")
    n_fft: int = setting(512, "FFT size; above --win-length it zero-pads each frame")
    win_length: int | None = setting(None, "analysis window in samples (default: --n-fft)")

    def config(self) -> EmbeddingConfig:
        return EmbeddingConfig(dim=self.dim, layers=self.layers, heads=self.heads, n_mels=self.n_mels, n_fft=self.n_fft,
                               win_length=self.win_length)


def tower(settings: TowerSettings, init: str | None) -> tuple[EmbeddingConfig, dict | None]:
    """The tower's config from the settings, or the config and weights of the E folder `init` (its architecture
    replaces the settings')."""
    if init:
        e = load_embedder(init).float()
        return e.config, e.state_dict()
    return settings.config(), None


def cosine_schedule(optimizer, warmup: int, steps: int):
    """Linear warm-up over `warmup` steps times a cosine decay to 0 at `steps`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                             * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))


def augment(chunks: torch.Tensor, rng: np.random.Generator, sample_rate: int, max_speed: float = 0.02,
            speed_prob: float = 1.0) -> torch.Tensor:
    """Per chunk: speed change m/50 up to ±max_speed (resampling: tempo and pitch shift together), gain (±6 dB),
    noise (15–40 dB SNR). Speed changes stay small by default: ±2 % is a third of a semitone. Larger shifts teach E
    to ignore key and tempo, which are much of what tells two pieces of one genre apart (held-out retrieval after
    200 steps: 0.52 with ±8 %, 0.59 with ±2 %)."""
    n = chunks.shape[-1]
    out = []
    steps = int(round(max_speed * 50))
    for x in chunks:
        # speed factor m/50: resampling between small coprime-ish rates keeps the polyphase filter short
        # (an arbitrary ratio such as 16592:16000 makes torchaudio build a huge kernel: ~1.4 s per chunk)
        m = int(rng.integers(50 - steps, 51 + steps)) if rng.random() < speed_prob else 50
        if m != 50:
            x = AF.resample(x, m, 50)[:n]
            x = F.pad(x, (0, n - x.shape[-1]))
        x = x * 10 ** (rng.uniform(-6, 6) / 20)
        snr_db = rng.uniform(15, 40)
        noise = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        x = x + noise * x.pow(2).mean().sqrt() * 10 ** (-snr_db / 20)
        out.append(x)
    return torch.stack(out)


def semi_hard_triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Anchors (B, D) and their positives (B, D), unit vectors; row j of `positive` is a negative for anchor i ≠ j."""
    dist = 1 - anchor @ positive.T  # (B, B) cosine distances
    d_ap = dist.diagonal()[:, None]  # (B, 1)
    off = ~torch.eye(len(dist), dtype=torch.bool, device=dist.device)
    semi = off & (dist > d_ap)  # negatives farther than the positive
    inf = torch.full_like(dist, float("inf"))
    semi_hard = torch.where(semi, dist, inf).min(dim=1).values  # closest of those
    hardest = torch.where(off, dist, inf).min(dim=1).values
    d_an = torch.where(torch.isfinite(semi_hard), semi_hard, hardest)
    return F.relu(d_ap.squeeze(1) - d_an + margin).mean()


def info_nce_loss(anchor: torch.Tensor, positive: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP/NT-Xent style) for unit anchors (B, D) and positives (B, D): row i's positive is
    row i."""
    logits = anchor @ positive.T / temperature
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def half_embeddings(model: AudioEmbedder, audio: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Pieces (N, 2 windows) -> unit embeddings of their first and second halves, (N, D) each."""
    w = model.config.window_samples
    a = torch.cat([F.normalize(model(x), dim=-1) for x in audio[:, :w].split(batch)])
    b = torch.cat([F.normalize(model(x), dim=-1) for x in audio[:, w:2 * w].split(batch)])
    return a, b


def retrieval_hits(a: torch.Tensor, b: torch.Tensor, candidates: int | None = None) -> np.ndarray:
    """Top-1 same-source retrieval per group: pieces are taken in consecutive groups of `candidates` (all at once
    if None; a last incomplete group is dropped), and in each group every first half `a` looks for its own second
    half among the group's second halves `b`. Returns each group's accuracy."""
    n = len(a) if candidates is None else candidates
    if not 0 < n <= len(a):
        raise ValueError(f"{n} candidates, but only {len(a)} pieces")
    return np.array([float(((a[g:g + n] @ b[g:g + n].T).argmax(dim=1) == torch.arange(n)).double().mean())
                     for g in range(0, len(a) - n + 1, n)])


def retrieval_top1(model: AudioEmbedder, audio: torch.Tensor, sample_rate: int) -> float:
    """Held-out pieces (N, 2 windows): how often a first half's nearest second half (among all N) is its own."""
    return float(retrieval_hits(*half_embeddings(model, audio))[0])


@dataclass(frozen=True)
class EmbeddingSettings:
    # data
    seed: int = setting(0, "corpus and initialisation seed")
    renderer: str = setting("synth", "how the corpus sounds: synth (the wavetable synthesiser, mono 16 kHz, as the "
                                     "shipped E and scorers until issue 27) or soundfont (the app's default: GM "
                                     "instruments, loudness-normalised, mixed to mono)")
    soundfont: str | None = setting(None, "the .sf2/.sf3 bank(s) for --renderer soundfont, comma-separated: pieces "
                                                   "alternate between them (default: the best installed)")
    pool: int = setting(1500, "training pieces rendered once and reused with new augmentations")
    eval_candidates: int = setting(200, "held-out pieces of the retrieval eval")
    init: str | None = setting(None, "start from this E folder (model.json + embedding.safetensors) and fine-tune it; "
                                     "its architecture replaces the tower flags")
    # optimisation
    batch: int = setting(48, "pieces per step (two chunks each)")
    lr: float = setting(5e-4, "peak learning rate")
    loss: str = setting("infonce", "contrastive loss", choices=("infonce", "triplet"))
    temperature: float = setting(0.1, "InfoNCE temperature")
    margin: float = setting(0.2, "triplet margin")
    warmup: int = setting(100, "steps of linear warm-up")
    max_speed: float = setting(0.02, "largest tempo/pitch change of the augmentation")
    speed_prob: float = setting(1.0, "share of chunks that get a speed change")
    steps: int = setting(800, "optimizer steps")
    genre_batches: float = setting(0.0, "share of steps whose batch comes from one genre (hard negatives: same "
                                        "style, other piece)")
    # run
    out: str = setting("runs/embedding", "run folder")
    eval_every: int = setting(100, "retrieval eval and save every N steps")

    def __post_init__(self):
        if min(self.pool, self.eval_candidates, self.batch, self.warmup, self.steps, self.eval_every) < 1:
            raise ValueError("pool, eval_candidates, batch, warmup, steps and eval_every must be ≥ 1")
        if self.batch > self.pool:
            raise ValueError(f"batch {self.batch} is larger than the pool of {self.pool} pieces")
        if not 0 <= self.genre_batches <= 1 or not 0 <= self.speed_prob <= 1:
            raise ValueError("genre_batches and speed_prob must be in [0, 1]")


def contrastive_step(model: AudioEmbedder, pool: torch.Tensor, genres: np.ndarray, s: EmbeddingSettings,
                     step: int) -> torch.Tensor:
    """The loss of one batch: two augmented halves of each piece, anchor and positive."""
    w, sr = model.config.window_samples, model.config.sample_rate
    rng = np.random.default_rng([s.seed, step])
    one_genre = s.genre_batches > 0 and rng.random() < s.genre_batches  # no draw at 0: E4's stream
    batch = pool[batch_indices(rng, genres, s.batch, one_genre)]
    anchor = F.normalize(model(augment(batch[:, :w], rng, sr, s.max_speed, s.speed_prob)), dim=-1)
    positive = F.normalize(model(augment(batch[:, w:2 * w], rng, sr, s.max_speed, s.speed_prob)), dim=-1)
    if s.loss == "infonce":
        return info_nce_loss(anchor, positive, s.temperature)
    return semi_hard_triplet_loss(anchor, positive, s.margin)


def train(s: EmbeddingSettings, tower_settings: TowerSettings) -> None:
    torch.manual_seed(s.seed)
    config, state = tower(tower_settings, s.init)
    model = AudioEmbedder(config)
    if state is not None:
        model.load_state_dict(state)
    codec = codecs(s.renderer, s.soundfont)
    train_idx = [i for i in range(s.pool * 2) if split_of(i) == "train"][:s.pool]
    heldout_idx = [i * HELD_OUT_EVERY for i in range(s.eval_candidates)]
    t0 = time.time()
    pool, genres = render_pool(s.seed, train_idx, 2 * config.window_s, codec, config.sample_rate)
    heldout, _ = render_pool(s.seed, heldout_idx, 2 * config.window_s, codec, config.sample_rate)
    print(f"rendered {len(pool)} + {len(heldout)} pieces in {time.time() - t0:.0f} s", flush=True)
    fit(model, pool, genres, heldout, s, tower_settings)


def fit(model: AudioEmbedder, pool: torch.Tensor, genres: np.ndarray, heldout: torch.Tensor, s: EmbeddingSettings,
        tower_settings: TowerSettings) -> float:
    """Train E on `pool` (N, 2 windows of audio at E's rate; `genres` for hard-negative batches) and evaluate
    same-source retrieval on `heldout` every `eval_every` steps, saving as it goes; returns the last top-1."""
    config = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01)
    sched = cosine_schedule(opt, s.warmup, s.steps)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(dict(dataclasses.asdict(tower_settings), **dataclasses.asdict(s), config=model.config_dict()),
              out / "model.json")
    top1 = float("nan")
    with open(out / "log.csv", "w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(["step", "loss", "retrieval_top1", "step_s"])
        for step in range(1, s.steps + 1):
            t = time.time()
            loss = contrastive_step(model, pool, genres, s, step)
            if not torch.isfinite(loss):
                raise SystemExit(f"step {step}: loss is {loss.item()}; stopping without saving")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            shown = ""
            if step % s.eval_every == 0 or step == s.steps:
                model.eval()
                top1 = retrieval_top1(model, heldout, config.sample_rate)
                shown = f"{top1:.3f}"
                model.train()
                save_state(dict(model.state_dict()), out / "embedding.safetensors")
                print(f"step {step} loss {loss.item():.4f} retrieval top-1 {shown}", flush=True)
            log.writerow([step, f"{loss.item():.4f}", shown, f"{time.time() - t:.2f}"])
            log_file.flush()
    return top1


def export(run: Path, dest: Path) -> None:
    """The shipped E folder: fp16 weights and the run's model.json."""
    copy_as_fp16(run / "embedding.safetensors", dest / "embedding.safetensors")
    save_json(json.loads((run / "model.json").read_text()), dest / "model.json")


def main(argv=None) -> None:
    settings, tower_settings = parse([EmbeddingSettings, TowerSettings], argv, description=__doc__)
    train(settings, tower_settings)


if __name__ == "__main__":
    main()
