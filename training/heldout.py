"""The one held-out evaluation: how the trainer's `eval.csv` and `training.evaluate`'s points are measured.

For each held-out prompt i (`training.corpus.heldout_prompts`): `clips` clips of `seconds`, sampled with the seed
`prompt_seed(i)` (the same for every model, so that two models are compared on the same draws), scored with the
shipped scorers. Per prompt: quality = mean over clips of ω·adherence + audio quality (and both parts), diversity =
mean pairwise r_D with E over the prompt's clips, its Vendi score, and, on nano's score codec, the exact metrics
read from the tokens (`engine.exact`): exact quality = ω·adherence to the caption's checkable requests + clean,
both parts, and exact diversity = the mean pairwise event distance of the clips. Averages are over prompts (a
prompt with no checkable request has no exact quality: NaN, left out of its means), standard errors over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engine import exact
from engine.score_codec import ScoreCodec
from engine.scorers import Scorers
from engine.service import DEFAULT_NEGATIVE_PROMPT, Generation, Request
from training.frontier import standard_error

PROMPT_SEED_STRIDE = 100_003  # a prime: prompt seeds of different base seeds do not collide for < 100k prompts
PER_PROMPT = ("quality", "adherence", "audio_quality", "diversity", "vendi", "event_diversity", "exact_quality",
              "exact_adherence", "clean")

Sampler = Callable[[Request], Generation]  # a request -> its clips, from some weights


@dataclass(frozen=True)
class HeldoutSettings:
    prompts: int = 32
    clips: int = 4
    seconds: float = 4.0
    seed: int = 0

    def __post_init__(self):
        if self.prompts < 1 or self.clips < 1 or not self.seconds > 0:
            raise ValueError(f"held-out evaluation needs prompts, clips ≥ 1 and seconds > 0, got {self}")

    def prompt_seed(self, i: int) -> int:
        return self.seed * PROMPT_SEED_STRIDE + i


@dataclass
class HeldoutResult:
    """Per-prompt values (lists over prompts) and per-clip shares of one way of sampling."""

    quality: list[float] = field(default_factory=list)
    diversity: list[float] = field(default_factory=list)
    vendi: list[float] = field(default_factory=list)
    event_diversity: list[float] = field(default_factory=list)  # mean pairwise event distance (nano tokens)
    drums: float = float("nan")  # share of clips with drums (nano tokens)
    degraded: float = float("nan")  # share of clips with noise/distortion tokens (nano tokens)
    sample_s_per_clip: float = 0.0
    adherence: list[float] = field(default_factory=list)
    audio_quality: list[float] = field(default_factory=list)
    exact_quality: list[float] = field(default_factory=list)  # ω · exact adherence + clean (NaN: nothing checkable)
    exact_adherence: list[float] = field(default_factory=list)  # share of the caption's checkable requests met
    clean: list[float] = field(default_factory=list)  # share of clips without degradation, on grid, in key
    requests: int = 0  # checkable requests over all prompts (each checked on every clip)
    lead_plays: float = float("nan")  # share of clips whose melody plays its part (`exact.melody_floor` notes)
    parts: float = float("nan")  # share of clips in which every part their caption calls for plays
    by_kind: dict = field(default_factory=dict)  # request kind -> [met, decided] over all clips (nano tokens)

    def mean(self, name: str, idx=None) -> float:
        v = np.asarray(getattr(self, name), dtype=float)
        v = v if idx is None else v[idx]
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    def sem(self, name: str) -> float:
        v = np.asarray(getattr(self, name), dtype=float)
        return standard_error(v[np.isfinite(v)])

    def summary(self) -> dict[str, float]:
        """Mean and standard error of every per-prompt value that was measured, and the sampling time."""
        out = {}
        for name in PER_PROMPT:
            if getattr(self, name):
                out[name], out[name + "_sem"] = self.mean(name), self.sem(name)
        return dict(out, sample_s_per_clip=self.sample_s_per_clip)


def _score(result: HeldoutResult, scorers: Scorers, gen: Generation, prompt: str) -> None:
    s = scorers.score(gen.audio, gen.sample_rate, prompt)
    if s.quality is not None:
        result.quality.append(float(s.quality.mean()))
        result.adherence.append(float(np.mean(s.adherence)))
        result.audio_quality.append(float(np.mean(s.audio_quality)))
    if s.mean_diversity is not None:
        result.diversity.append(s.mean_diversity)
        result.vendi.append(s.vendi)


def _read_tokens(result: HeldoutResult, codes: np.ndarray, prompt: str, readings: list) -> None:
    result.event_diversity.append(exact.event_diversity(codes))
    scores = [exact.score_clip(c, prompt) for c in codes]
    checkable = scores[0].adherence is not None
    result.exact_adherence.append(float(np.mean([s.adherence for s in scores])) if checkable else float("nan"))
    result.exact_quality.append(float(np.mean([s.quality for s in scores])) if checkable else float("nan"))
    result.clean.append(float(np.mean([s.clean for s in scores])))
    result.requests += len(scores[0].met)
    for s in scores:
        for name, ok in s.met.items():
            counts = result.by_kind.setdefault(exact.kind(name), [0, 0])
            counts[0] += int(ok)
            counts[1] += 1
    readings += [(s.reading, prompt) for s in scores]


def measure(sample: Sampler, prompts: list[str], settings: HeldoutSettings, scorers: Scorers | None,
            readable: bool, temperature: float = 1.0, guidance: float = 1.0,
            negative: str = DEFAULT_NEGATIVE_PROMPT, plausibility: float = 0.0, top_p: float = 0.0) -> HeldoutResult:
    """Evaluate one way of sampling (`sample` with these temperature/CFG settings) on `prompts`.
    `readable`: the clips are nano score-codec tokens, so the exact metrics, drums and noise are read from them."""
    result, readings, sample_s = HeldoutResult(), [], 0.0
    for i, prompt in enumerate(prompts):
        req = Request(prompt, settings.clips, settings.seconds, seed=settings.prompt_seed(i), temperature=temperature,
                      guidance=guidance, negative_prompt=negative, plausibility=plausibility, top_p=top_p)
        gen = sample(req)
        sample_s += gen.timings["sampling"]
        if scorers is not None:
            _score(result, scorers, gen, prompt)
        if readable:
            _read_tokens(result, gen.codes.numpy(), prompt, readings)
    if readings:
        result.drums = float(np.mean([r.drums for r, _ in readings]))
        result.degraded = float(np.mean([r.noise_events > 0 for r, _ in readings]))
        result.lead_plays = float(np.mean([exact.parts_playing(r, prompt)["lead"] for r, prompt in readings]))
        result.parts = float(np.mean([exact.clean_parts(r, prompt)["parts"] for r, prompt in readings]))
    result.sample_s_per_clip = sample_s / (len(prompts) * settings.clips)
    return result


def is_readable(codec) -> bool:
    """Whether clips of this codec can be read token by token (nano's score codec)."""
    return isinstance(codec, ScoreCodec)
