"""Diversity rewards r_D for REINFORCE (paper Eq. 3–4, Appendix A), one registry entry each.

A reward looks at the N samples the student drew for each of P prompts, codes (P, N, K, T), and says how different
they are. It is either
  - **pairwise**: distances (P, N, N) with a zero diagonal; each sample's reward is its mean distance to the others
    (`training.losses.per_sample_rewards`) and both baselines apply ('loo' with N ≥ 3, 'batch'); or
  - **set-level**: rewards (P, N) directly (e.g. each sample's marginal contribution to a set score); only the 'batch'
    baseline applies (the leave-one-out baseline is defined on pairs).
What it needs to be built is stated (`needs`): E, the diversity embedding (audio rewards), or nano's score codec
(rewards read from note events). Adding a reward is one `register` call (`tests/test_distill.py` registers one from
the test module and trains with it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor

from engine.diversity import pairwise_diversity
from engine.exact import event_distances
from engine.model import MusicModel
from engine.score_codec import ScoreCodec

Embedder = Callable[[Tensor, int], Tensor]  # (waveforms (B, samples), sample rate) -> embeddings (B, D)
NEEDS = ("", "embedding", "score_codec")  # what a reward is built from besides the base model


class Reward(Protocol):
    pairwise: bool

    def __call__(self, codes: Tensor) -> Tensor:
        """codes (P, N, K, T) -> distances (P, N, N) if `pairwise`, else per-sample rewards (P, N); no gradient."""

    def take_timings(self) -> dict[str, float]:
        """Seconds spent since the last call, by part (e.g. decode_s, embed_s), for the training log."""


@dataclass(frozen=True)
class RewardKind:
    """A registry entry: how to build a reward for a base model (and E, where it needs it)."""

    key: str  # the --reward value
    help: str
    build: Callable[[MusicModel, Embedder | None], Reward]
    needs: str = ""  # "embedding" (E), "score_codec" (nano's readable tokens) or ""
    pairwise: bool = True

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"needs must be one of {NEEDS}, got {self.needs!r}")

    def check(self, model: MusicModel, embedder: Embedder | None) -> None:
        """Refuse, with the reason, a model or a missing E this reward cannot work with."""
        if self.needs == "embedding" and embedder is None:
            raise ValueError(f"the {self.key!r} reward needs a diversity embedding E (--embedding)")
        if self.needs == "score_codec" and not isinstance(model.codec, ScoreCodec):
            raise ValueError(f"the {self.key!r} reward reads note events from tokens: only nano's score codec has "
                             "them")


REWARDS: dict[str, RewardKind] = {}


def register(kind: RewardKind) -> RewardKind:
    if kind.key in REWARDS:
        raise ValueError(f"reward {kind.key!r} is already registered")
    REWARDS[kind.key] = kind
    return kind


def unregister(key: str) -> None:
    """Remove a reward (tests that register their own)."""
    REWARDS.pop(key, None)


def reward_kind(key: str) -> RewardKind:
    if key not in REWARDS:
        raise ValueError(f"unknown reward {key!r}; choose one of {list(REWARDS)}")
    return REWARDS[key]


@dataclass
class EmbeddingReward:
    """1 − cos(E(y_i), E(y_j)) between the clips' audio (the paper's r_D): decode, embed, compare."""

    model: MusicModel
    embedder: Embedder
    pairwise: bool = True
    timings: dict[str, float] = field(default_factory=lambda: dict(decode_s=0.0, embed_s=0.0))

    def __call__(self, codes: Tensor) -> Tensor:
        P, N = codes.shape[:2]
        t0 = time.perf_counter()
        audio = self.model.codec.decode(codes.flatten(0, 1))
        t1 = time.perf_counter()
        emb = self.embedder(audio, self.model.sample_rate).view(P, N, -1)
        self.timings["decode_s"] += t1 - t0
        self.timings["embed_s"] += time.perf_counter() - t1
        return pairwise_diversity(emb)

    def take_timings(self) -> dict[str, float]:
        out, self.timings = self.timings, dict(decode_s=0.0, embed_s=0.0)
        return out


@dataclass
class EventReward:
    """The share of differing note events between two clips, read from nano's tokens (`engine.exact`; ours)."""

    pairwise: bool = True

    def __call__(self, codes: Tensor) -> Tensor:
        groups = codes.cpu().numpy()
        return torch.stack([torch.from_numpy(event_distances(g)).float() for g in groups]).to(codes.device)

    def take_timings(self) -> dict[str, float]:
        return {}


register(RewardKind("embedding", "1 − cosine of E's embeddings of the clips' audio (the paper's)",
                    lambda model, embedder: EmbeddingReward(model, embedder), needs="embedding"))
register(RewardKind("events", "nano only: the share of differing note events, read from the tokens by engine.exact "
                              "(our addition)", lambda model, embedder: EventReward(), needs="score_codec"))
