"""Train E, the diversity embedding, by self-supervised contrast on rendered corpus audio (Appendix C.1).

Positives: the two non-overlapping 4 s halves of one 8 s piece. Negatives: chunks of the other pieces in
the batch. Each chunk is augmented independently (noise at a random SNR, gain, speed change = tempo and
pitch shift by resampling), so that E ignores loudness and noise and keys on musical content.
Loss (`--loss`): symmetric InfoNCE over the batch (default: every other chunk in the batch is a negative, all at
once, which trains much faster than triplets here) or the paper's semi-hard triplet loss on cosine distance
(FaceNet: for each anchor–positive pair, the closest negative that is still farther than the positive, else the
hardest negative).
Eval: same-source retrieval: held-out first halves find their second half among `--eval-candidates`.

    python -m training.train_embedding --out runs/embedding --steps 800        # then --export weights/embedding
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
import torchaudio.functional as AF

from engine.checkpoint import copy_as_fp16, save_json, save_state
from engine.embedding import AudioEmbedder, EmbeddingConfig, load_embedder
from engine.score_codec import FRAME_RATE, ScoreCodec
from training.corpus import HELD_OUT_EVERY, generate_piece, render, split_of


def render_pool(seed: int, indices: list[int], seconds: float, codec: ScoreCodec) -> tuple[torch.Tensor, np.ndarray]:
    """(len(indices), samples) audio of corpus pieces, and each piece's genre."""
    pieces = [generate_piece(seed, i, int(seconds * FRAME_RATE)) for i in indices]
    return render(pieces, codec), np.array([pc.attributes["genre"] for pc in pieces])


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


def add_tower_args(p, init_flag: str, init_help: str) -> None:
    """The audio tower's architecture flags (E's and the quality scorer's), and the flag that starts from an E."""
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--n-mels", type=int, default=64)
    p.add_argument("--n-fft", type=int, default=512, help="FFT size; above --win-length it zero-pads each frame")
    p.add_argument("--win-length", type=int, default=None, help="analysis window in samples (default: --n-fft)")
    p.add_argument(init_flag, default=None, help=f"start from this E folder (model.json + embedding.safetensors); its "
                                                 f"architecture replaces --dim/--layers/--heads/--n-mels. {init_help}")


def tower_from_args(args, init: str | None) -> tuple[EmbeddingConfig, dict | None]:
    """The tower's config from the flags, or the config and weights of the E folder `init`."""
    if init:
        e = load_embedder(init).float()
        return e.config, e.state_dict()
    return EmbeddingConfig(dim=args.dim, layers=args.layers, heads=args.heads, n_mels=args.n_mels, n_fft=args.n_fft,
                           win_length=args.win_length), None


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
    """Symmetric InfoNCE (CLIP/NT-Xent style) for unit anchors (B, D) and positives (B, D): row i's positive is row i."""
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # data
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=1500, help="training pieces rendered once and reused with new augmentations")
    p.add_argument("--eval-candidates", type=int, default=200)
    # model
    add_tower_args(p, "--init", "Fine-tunes it.")
    # optimisation
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--loss", choices=("infonce", "triplet"), default="infonce")
    p.add_argument("--temperature", type=float, default=0.1, help="InfoNCE temperature")
    p.add_argument("--margin", type=float, default=0.2, help="triplet margin")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-speed", type=float, default=0.02, help="largest tempo/pitch change of the augmentation")
    p.add_argument("--speed-prob", type=float, default=1.0, help="share of chunks that get a speed change")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--genre-batches", type=float, default=0.0,
                   help="share of steps whose batch comes from one genre (hard negatives: same style, other piece)")
    # run
    p.add_argument("--out", default="runs/embedding")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--export", default=None, help="only write the run's model to this folder and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.export:
        dest = Path(args.export)
        copy_as_fp16(out / "embedding.safetensors", dest / "embedding.safetensors")
        save_json(json.loads((out / "model.json").read_text()), dest / "model.json")
        return

    torch.manual_seed(args.seed)
    config, state = tower_from_args(args, args.init)
    model = AudioEmbedder(config)
    if state is not None:
        model.load_state_dict(state)
    codec = ScoreCodec()
    sr = config.sample_rate
    train_idx = [i for i in range(args.pool * 2) if split_of(i) == "train"][:args.pool]
    heldout_idx = [i * HELD_OUT_EVERY for i in range(args.eval_candidates)]
    t0 = time.time()
    pool, genres = render_pool(args.seed, train_idx, 2 * config.window_s, codec)
    heldout, _ = render_pool(args.seed, heldout_idx, 2 * config.window_s, codec)
    print(f"rendered {len(pool)} + {len(heldout)} pieces in {time.time() - t0:.0f} s", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup)
                                              * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)))
    out.mkdir(parents=True, exist_ok=True)
    save_json(dict(vars(args), config=model.config_dict()), out / "model.json")
    log_file = open(out / "log.csv", "w", newline="")
    log = csv.writer(log_file)
    log.writerow(["step", "loss", "retrieval_top1", "step_s"])
    w = config.window_samples
    for step in range(1, args.steps + 1):
        t = time.time()
        rng = np.random.default_rng([args.seed, step])
        one_genre = args.genre_batches > 0 and rng.random() < args.genre_batches  # no draw at 0: E4's stream
        batch = pool[batch_indices(rng, genres, args.batch, one_genre)]
        anchor = F.normalize(model(augment(batch[:, :w], rng, sr, args.max_speed, args.speed_prob)), dim=-1)
        positive = F.normalize(model(augment(batch[:, w:2 * w], rng, sr, args.max_speed, args.speed_prob)), dim=-1)
        if args.loss == "infonce":
            loss = info_nce_loss(anchor, positive, args.temperature)
        else:
            loss = semi_hard_triplet_loss(anchor, positive, args.margin)
        if not torch.isfinite(loss):
            raise SystemExit(f"step {step}: loss is {loss.item()}; stopping without saving")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        top1 = ""
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            top1 = f"{retrieval_top1(model, heldout, sr):.3f}"
            model.train()
            save_state(dict(model.state_dict()), out / "embedding.safetensors")
            print(f"step {step} loss {loss.item():.4f} retrieval top-1 {top1}", flush=True)
        log.writerow([step, f"{loss.item():.4f}", top1, f"{time.time() - t:.2f}"])
        log_file.flush()


if __name__ == "__main__":
    main()
