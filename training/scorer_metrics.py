"""Acceptance measurements of E and the quality scorers, on held-out corpus pieces and nano generations.

E (diversity embedding):
- same-source retrieval: the first 4 s half of each held-out piece finds its own second half among the second
  halves of `--candidates` held-out pieces (top-1), averaged over the disjoint groups of `--retrieval-pieces`
  held-out pieces (± the standard error over groups); also among twice as many and among all of them;
- r_D between: two augmented renderings of the same piece (lower reference); two different corpus pieces; the
  paper's "upper bound": base-model generations for two different prompts; and, as context, two seeds of one prompt;
- hackability: r_D between a clip and the same clip with noise added (20 dB SNR), its gain changed (±6 dB), and
  drums added (the drum stream of another piece laid over a drum-less piece). These should stay well below
  the different-piece diversity; the paper found its E biased toward background drums.
Quality: adherence top-1 (own caption vs `--distractors` other clips' captions), clean-vs-degraded ROC AUC. Adherence
twice: against any other caption (many are generic, "Rock.", and also true of the clip) and against captions that
are false for the clip (not among `corpus.possible_captions` of its attributes).
Speed: one `Scorers.score` call on 8 clips of 8 s (E + adherence + audio quality), median of repeats.

    python -m training.scorer_metrics --embedding weights/embedding --quality weights/quality --out metrics.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.checkpoint import save_json
from engine.model import load_model
from engine.score_codec import FRAME_RATE, ScoreCodec
from engine.scorers import Scorers, SentenceEncoder
from engine.service import MusicService, Request
from training.corpus import HELD_OUT_EVERY, generate_piece, possible_captions, render
from training.train_embedding import augment, half_embeddings, retrieval_hits
from training.train_scorers import evaluate


def paired_rd(scorers: Scorers, a: torch.Tensor, b: torch.Tensor, sr: int) -> np.ndarray:
    """r_D between row i of a and row i of b."""
    return (1 - (scorers.embed(a, sr) * scorers.embed(b, sr)).sum(-1)).numpy()


def summary(x) -> dict:
    x = np.asarray(x, dtype=float)
    return dict(mean=float(x.mean()), sem=float(x.std(ddof=1) / np.sqrt(len(x))), n=int(len(x)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedding", default="weights/embedding")
    p.add_argument("--quality", default="weights/quality")
    p.add_argument("--model", default="weights/nano", help="base model for the generation-based measurements")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--candidates", type=int, default=100, help="retrieval: pieces each query is compared with")
    p.add_argument("--retrieval-pieces", type=int, default=1000, help="held-out pieces for retrieval (groups of --candidates)")
    p.add_argument("--pairs", type=int, default=200, help="held-out pieces for the r_D pairs")
    p.add_argument("--heldout", type=int, default=600, help="held-out pieces for the quality scorers")
    p.add_argument("--distractors", type=int, default=10)
    p.add_argument("--prompts", type=int, default=32, help="prompt pairs for the generation-based r_D")
    p.add_argument("--out", default=None, help="write the metrics JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    scorers = Scorers.from_folders(args.embedding, args.quality)
    codec = ScoreCodec()
    sr = codec.sample_rate
    frames = int(8 * FRAME_RATE)
    results: dict = {}

    # --- E on corpus audio
    # one set of held-out pieces, rendered once: retrieval, the r_D pairs and the quality scorers take its first ones
    held_pieces = [generate_piece(args.seed, i * HELD_OUT_EVERY, frames)
                   for i in range(max(args.retrieval_pieces, args.pairs, args.heldout))]
    held_audio = render(held_pieces, codec)
    retrieval = held_pieces[:args.retrieval_pieces]
    halves = half_embeddings(scorers.embedder, held_audio[:len(retrieval)])
    results["retrieval_top1"] = {}
    for n in dict.fromkeys((args.candidates, 2 * args.candidates, len(retrieval))):
        if n <= len(retrieval):
            hits = retrieval_hits(*halves, n)
            results["retrieval_top1"][str(n)] = dict(value=float(hits.mean()), candidates=n, groups=len(hits),
                                                     sem=float(hits.std(ddof=1) / np.sqrt(len(hits))) if len(hits) > 1 else None)
    pieces, audio = held_pieces[:args.pairs], held_audio[:args.pairs]
    w = scorers.embedder.config.window_samples
    rng = np.random.default_rng(args.seed)
    noise_rng = torch.Generator().manual_seed(args.seed)  # the same noise whichever scorers were built before
    half = audio[:, :w]
    rd = {"same piece, two augmented renderings": paired_rd(scorers, augment(half, rng, sr), augment(half, rng, sr), sr),
          "two different corpus pieces": paired_rd(scorers, half, half.roll(1, 0), sr),
          "noise added (20 dB SNR)": paired_rd(scorers, half, half + torch.randn(half.shape, generator=noise_rng)
                                               * half.pow(2).mean(1, keepdim=True).sqrt() * 0.1, sr),
          "gain +6 dB": paired_rd(scorers, half, half * 2.0, sr),
          "gain -6 dB": paired_rd(scorers, half, half * 0.5, sr)}
    drumless = [pc for pc in pieces if not pc.attributes["drums"] and not pc.attributes["degraded"]]
    drummed = [pc for pc in pieces if pc.attributes["drums"] and not pc.attributes["degraded"]]
    with_drums = []
    for k, pc in enumerate(drumless):
        codes = pc.codes.copy()
        codes[3] = drummed[k % len(drummed)].codes[3]
        with_drums.append(type(pc)(pc.index, codes, pc.caption, pc.attributes))
    rd["drums added"] = paired_rd(scorers, render(drumless, codec)[:, :w], render(with_drums, codec)[:, :w], sr)

    # --- E on generations of the base model
    service = MusicService(load_model(args.model))
    clean = [pc for pc in pieces if not pc.attributes["degraded"]]
    prompts = [pc.caption for pc in clean]
    firsts, seconds_, sames = [], [], []
    for j in range(args.prompts):
        a, b = prompts[(2 * j) % len(prompts)], prompts[(2 * j + 1) % len(prompts)]
        ga = service.generate_base(Request(a, num_clips=2, duration_s=8.0, seed=j)).audio
        gb = service.generate_base(Request(b, num_clips=1, duration_s=8.0, seed=10_000 + j)).audio
        firsts.append(ga[0])
        seconds_.append(gb[0])
        sames.append(ga[1])
    firsts, seconds_, sames = (torch.as_tensor(np.stack(x)) for x in (firsts, seconds_, sames))
    rd["generations, two different prompts (upper bound)"] = paired_rd(scorers, firsts, seconds_, sr)
    rd["generations, one prompt, two seeds"] = paired_rd(scorers, firsts, sames, sr)
    results["diversity"] = {k: summary(v) for k, v in rd.items()}

    # --- quality scorers
    held = held_pieces[:args.heldout]
    sentences = scorers.sentences or SentenceEncoder()
    truths = [possible_captions(pc.attributes) for pc in held]
    q = evaluate(scorers.quality_scorer, held_audio[:args.heldout], [pc.caption for pc in held],
                 np.array([pc.attributes["degraded"] for pc in held]), sentences([pc.caption for pc in held]),
                 args.distractors, args.seed, truths)
    results["quality"] = dict(q, heldout=len(held), degraded=int(sum(pc.attributes["degraded"] for pc in held)),
                              distractors=args.distractors)
    # quality of generations with and without CFG, as a sanity check of the scorers on model audio
    gen_q = {}
    for label, gamma in (("base", 1.0), ("base + CFG γ=3", 3.0)):
        scores = [scorers.score(service.generate_base(Request(pr, num_clips=2, duration_s=8.0, seed=j, guidance=gamma)).audio,
                                sr, pr) for j, pr in enumerate(prompts[:args.prompts])]
        gen_q[label] = dict(adherence=summary(np.concatenate([s.adherence for s in scores])),
                            audio_quality=summary(np.concatenate([s.audio_quality for s in scores])),
                            quality=summary(np.concatenate([s.quality for s in scores])))
    results["generation_quality"] = gen_q

    # --- speed of one scoring call: 8 clips of 8 s
    clips = audio[:8, : 8 * sr]
    scorers.score(clips, sr, prompts[0])  # warm-up
    times = []
    for _ in range(5):
        t = time.perf_counter()
        scorers.score(clips, sr, prompts[1])
        times.append(time.perf_counter() - t)
    results["score_8_clips_8s_s"] = float(np.median(times))
    results["threads"] = torch.get_num_threads()

    for r in results["retrieval_top1"].values():
        sem = f" ± {r['sem']:.3f}" if r["sem"] is not None else ""
        print(f"E retrieval top-1 among {r['candidates']}: {r['value']:.3f}{sem} ({r['groups']} group(s) of held-out pieces)")
    for k, v in results["diversity"].items():
        print(f"  r_D {k:52s} {v['mean']:.3f} ± {v['sem']:.3f} (n={v['n']})")
    print(f"adherence top-1 vs {args.distractors} distractors: {q['adherence_top1']:.3f} (any other caption), "
          f"{q['adherence_top1_false_distractors']:.3f} (captions false for the clip); ceiling of the first reading "
          f"for a scorer that only tells true captions from false ones: {q['adherence_top1_ceiling']:.3f}; "
          f"audio-quality ROC AUC: {q['quality_auc']:.3f} ({results['quality']['degraded']} degraded of {len(held)})")
    for k, v in gen_q.items():
        print(f"  {k:16s} adherence {v['adherence']['mean']:.3f} ± {v['adherence']['sem']:.3f}  "
              f"audio quality {v['audio_quality']['mean']:.3f} ± {v['audio_quality']['sem']:.3f}  "
              f"quality {v['quality']['mean']:.3f} ± {v['quality']['sem']:.3f}")
    print(f"scoring 8 clips × 8 s: {results['score_8_clips_8s_s']:.3f} s (median of 5, {results['threads']} threads)")
    if args.out:
        save_json(dict(results, embedding_path=args.embedding, quality_path=args.quality, model_path=args.model), args.out)


if __name__ == "__main__":
    main()
