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

import time
from dataclasses import dataclass

import numpy as np
import torch

from engine import shipped
from engine.checkpoint import save_json
from engine.model import load_model
from engine.score_codec import FRAME_RATE, ScoreCodec
from engine.scorers import Scorers, SentenceEncoder
from engine.service import MusicService, Request
from training.corpus import HELD_OUT_EVERY, codecs, generate_piece, possible_captions, render
from training.frontier import standard_error
from training.settings import parse, setting
from training.train_embedding import augment, half_embeddings, retrieval_hits
from training.train_scorers import evaluate


def paired_rd(scorers: Scorers, a: torch.Tensor, b: torch.Tensor, sr: int) -> np.ndarray:
    """r_D between row i of a and row i of b."""
    return (1 - (scorers.embed(a, sr) * scorers.embed(b, sr)).sum(-1)).numpy()


def summary(x) -> dict:
    x = np.asarray(x, dtype=float)
    return dict(mean=float(x.mean()), sem=standard_error(x), n=int(len(x)))


@dataclass(frozen=True)
class MetricsSettings:
    embedding: str = setting(shipped.EMBEDDING, "E")
    quality: str = setting(shipped.QUALITY, "quality scorer")
    model: str = setting(shipped.NANO, "base model for the generation-based measurements")
    seed: int = setting(0, "corpus seed")
    candidates: int = setting(100, "retrieval: pieces each query is compared with")
    retrieval_pieces: int = setting(1000, "held-out pieces for retrieval (groups of --candidates)")
    pairs: int = setting(200, "held-out pieces for the r_D pairs")
    heldout: int = setting(600, "held-out pieces for the quality scorers")
    distractors: int = setting(10, "captions each clip's own caption competes with")
    prompts: int = setting(32, "prompt pairs for the generation-based r_D")
    renderer: str = setting("synth", "how the corpus and the generations sound: synth (the wavetable synthesiser, "
                                     "mono 16 kHz, the shipped E and scorers were trained on) or soundfont (the "
                                     "app's default: GM instruments, loudness-normalised, mixed to mono)")
    soundfont: str | None = setting(None, "the .sf2/.sf3 bank(s) for --renderer soundfont, comma-separated: pieces "
                                                   "alternate between them (default: the best installed)")
    out: str | None = setting(None, "write the metrics JSON here")

    def __post_init__(self):
        if min(self.candidates, self.retrieval_pieces, self.pairs, self.heldout, self.distractors, self.prompts) < 1:
            raise ValueError("every count must be ≥ 1")


def retrieval_results(scorers: Scorers, audio: torch.Tensor, s: MetricsSettings) -> dict:
    """Top-1 same-source retrieval among --candidates, twice as many and all pieces, with standard errors."""
    halves = half_embeddings(scorers.embedder, audio)
    out = {}
    for n in dict.fromkeys((s.candidates, 2 * s.candidates, len(audio))):
        if n <= len(audio):
            hits = retrieval_hits(*halves, n)
            out[str(n)] = dict(value=float(hits.mean()), candidates=n, groups=len(hits),
                               sem=standard_error(hits) if len(hits) > 1 else None)
    return out


def corpus_pairs(scorers: Scorers, pieces: list, audio: torch.Tensor, codec: list[ScoreCodec], sr: int,
                 seed: int) -> dict:
    """r_D of corpus pairs (`audio` at `sr`): augmented renderings, other pieces, and the hackability probes."""
    w = scorers.embedder.config.window_samples
    rng = np.random.default_rng(seed)
    noise_rng = torch.Generator().manual_seed(seed)  # the same noise whichever scorers were built before
    half = audio[:, :w]
    noise = torch.randn(half.shape, generator=noise_rng) * half.pow(2).mean(1, keepdim=True).sqrt() * 0.1
    rd = {
        "same piece, two augmented renderings": paired_rd(scorers, augment(half, rng, sr), augment(half, rng, sr), sr),
        "two different corpus pieces": paired_rd(scorers, half, half.roll(1, 0), sr),
        "noise added (20 dB SNR)": paired_rd(scorers, half, half + noise, sr),
        "gain +6 dB": paired_rd(scorers, half, half * 2.0, sr),
        "gain -6 dB": paired_rd(scorers, half, half * 0.5, sr),
    }
    drumless = [pc for pc in pieces if not pc.attributes["drums"] and not pc.attributes["degraded"]]
    drummed = [pc for pc in pieces if pc.attributes["drums"] and not pc.attributes["degraded"]]
    with_drums = []
    for k, pc in enumerate(drumless):
        codes = pc.codes.copy()
        codes[3] = drummed[k % len(drummed)].codes[3]
        with_drums.append(type(pc)(pc.index, codes, pc.caption, pc.attributes))
    rd["drums added"] = paired_rd(scorers, render(drumless, codec, sample_rate=sr)[:, :w],
                                  render(with_drums, codec, sample_rate=sr)[:, :w], sr)
    return rd


def generation_pairs(scorers: Scorers, service: MusicService, prompts: list[str], n: int) -> dict:
    """r_D of base-model generations: two prompts (the paper's upper bound) and one prompt with two seeds."""
    firsts, seconds_, sames = [], [], []
    for j in range(n):
        a, b = prompts[(2 * j) % len(prompts)], prompts[(2 * j + 1) % len(prompts)]
        ga = service.generate_base(Request(a, num_clips=2, duration_s=8.0, seed=j)).audio
        gb = service.generate_base(Request(b, num_clips=1, duration_s=8.0, seed=10_000 + j)).audio
        firsts.append(ga[0])
        seconds_.append(gb[0])
        sames.append(ga[1])
    firsts, seconds_, sames = (torch.as_tensor(np.stack(x)) for x in (firsts, seconds_, sames))
    sr = service.model.sample_rate
    return {
        "generations, two different prompts (upper bound)": paired_rd(scorers, firsts, seconds_, sr),
        "generations, one prompt, two seeds": paired_rd(scorers, firsts, sames, sr),
    }


def generation_quality(scorers: Scorers, service: MusicService, prompts: list[str]) -> dict:
    """Quality of generations with and without CFG, as a sanity check of the scorers on model audio."""
    out = {}
    for label, gamma in (("base", 1.0), ("base + CFG γ=3", 3.0)):
        scores = [scorers.score(service.generate_base(Request(pr, num_clips=2, duration_s=8.0, seed=j,
                                                              guidance=gamma)).audio, service.model.sample_rate, pr)
                  for j, pr in enumerate(prompts)]
        out[label] = {name: summary(np.concatenate([getattr(s, name) for s in scores]))
                      for name in ("adherence", "audio_quality", "quality")}
    return out


def scoring_time(scorers: Scorers, clips: torch.Tensor, sr: int, prompts: list[str], repeats: int = 5) -> float:
    """Median seconds of one scoring call (after a warm-up)."""
    scorers.score(clips, sr, prompts[0])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        scorers.score(clips, sr, prompts[1])
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def print_results(results: dict, s: MetricsSettings) -> None:
    for r in results["retrieval_top1"].values():
        sem = f" ± {r['sem']:.3f}" if r["sem"] is not None else ""
        print(f"E retrieval top-1 among {r['candidates']}: {r['value']:.3f}{sem} ({r['groups']} group(s) of held-out "
              f"pieces)")
    for k, v in results["diversity"].items():
        print(f"  r_D {k:52s} {v['mean']:.3f} ± {v['sem']:.3f} (n={v['n']})")
    q = results["quality"]
    print(f"adherence top-1 vs {s.distractors} distractors: {q['adherence_top1']:.3f} (any other caption), "
          f"{q['adherence_top1_false_distractors']:.3f} (captions false for the clip); ceiling of the first reading "
          f"for a scorer that only tells true captions from false ones: {q['adherence_top1_ceiling']:.3f}; "
          f"audio-quality ROC AUC: {q['quality_auc']:.3f} ({q['degraded']} degraded of {q['heldout']})")
    for k, v in results["generation_quality"].items():
        print(f"  {k:16s} adherence {v['adherence']['mean']:.3f} ± {v['adherence']['sem']:.3f}  "
              f"audio quality {v['audio_quality']['mean']:.3f} ± {v['audio_quality']['sem']:.3f}  "
              f"quality {v['quality']['mean']:.3f} ± {v['quality']['sem']:.3f}")
    print(f"scoring 8 clips × 8 s: {results['score_8_clips_8s_s']:.3f} s (median of 5, {results['threads']} threads)")


def measure_all(s: MetricsSettings) -> dict:
    torch.manual_seed(0)
    scorers = Scorers.from_folders(s.embedding, s.quality)
    codec = codecs(s.renderer, s.soundfont)
    sr = scorers.embedder.config.sample_rate  # pieces are rendered at E's rate (the generations at the codec's)
    # one set of held-out pieces, rendered once: retrieval, the r_D pairs and the quality scorers take its first ones
    held = [generate_piece(s.seed, i * HELD_OUT_EVERY, int(8 * FRAME_RATE))
            for i in range(max(s.retrieval_pieces, s.pairs, s.heldout))]
    audio = render(held, codec, sample_rate=sr)
    results: dict = dict(retrieval_top1=retrieval_results(scorers, audio[:s.retrieval_pieces], s))
    rd = corpus_pairs(scorers, held[:s.pairs], audio[:s.pairs], codec, sr, s.seed)
    service = MusicService(load_model(s.model))
    service.model.codec = codec[0]  # generations through the first bank
    prompts = [pc.caption for pc in held[:s.pairs] if not pc.attributes["degraded"]]
    rd.update(generation_pairs(scorers, service, prompts, s.prompts))
    results["diversity"] = {k: summary(v) for k, v in rd.items()}
    quality_set = held[:s.heldout]
    sentences = scorers.sentences or SentenceEncoder()
    q = evaluate(scorers.quality_scorer, audio[:s.heldout], [pc.caption for pc in quality_set],
                 np.array([pc.attributes["degraded"] for pc in quality_set]),
                 sentences([pc.caption for pc in quality_set]), s.distractors, s.seed,
                 [possible_captions(pc.attributes) for pc in quality_set])
    results["quality"] = dict(q, heldout=len(quality_set), distractors=s.distractors,
                              degraded=int(sum(pc.attributes["degraded"] for pc in quality_set)))
    results["generation_quality"] = generation_quality(scorers, service, prompts[:s.prompts])
    results["score_8_clips_8s_s"] = scoring_time(scorers, audio[:8, :8 * sr], sr, prompts)
    results["threads"] = torch.get_num_threads()
    return results


def main(argv=None) -> None:
    (settings,) = parse([MetricsSettings], argv, description=__doc__)
    results = measure_all(settings)
    print_results(results, settings)
    if settings.out:
        save_json(dict(results, embedding_path=settings.embedding, quality_path=settings.quality,
                       model_path=settings.model), settings.out)


if __name__ == "__main__":
    main()
