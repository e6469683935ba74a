"""Weight merging (paper Section 2.4): θ = (1−λ)·θ_q + λ·θ_d, LERP toward the base, uniform soups.

Every checkpoint is held pristine as one flat tensor in the serving decoder's parameter order, so a
merge is a single fused kernel writing straight into the serving weights (`FastDecoder.flat`):
`torch.lerp(θ_a, θ_b, λ, out=serving)` reads two buffers and writes one, the memory-bandwidth minimum.
Merges are always recomputed from the pristine endpoints, never from the current serving weights, so
nothing drifts however many times the slider moves.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.checkpoint import load_state
from engine.decoder import FastDecoder


@dataclass(frozen=True)
class Blend:
    """An affine combination of named checkpoints: finite weights that sum to 1. A weighted average when every
    weight is ≥ 0 (LERP, soups); a negative weight extrapolates (task arithmetic: θ_q + λ·(θ_d − base) is
    q: 1, d: λ, base: −λ), which `WeightMixer` computes the same way.

    Zero-weight entries are dropped, so λ = 0 and λ = 1 are plain copies of one endpoint."""

    parts: tuple[tuple[str, float], ...]

    def __post_init__(self):
        if not self.parts:
            raise ValueError("a blend needs at least one checkpoint")
        names = [n for n, _ in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"a checkpoint appears twice in the blend: {names}")
        for name, w in self.parts:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"blend weight of {name!r} must be a finite number, got {w!r}")
        total = sum(w for _, w in self.parts)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"blend weights must sum to 1, got {total}")
        object.__setattr__(self, "parts", tuple((n, float(w)) for n, w in self.parts if w != 0))

    @staticmethod
    def lerp(a: str, b: str, lam: float) -> "Blend":
        """(1−λ)·a + λ·b, λ ∈ [0, 1]."""
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or not 0 <= lam <= 1:
            raise ValueError(f"λ must be a number in [0, 1], got {lam!r}")
        return Blend(((a, 1.0 - lam), (b, float(lam))))

    @staticmethod
    def soup(names: list[str], weights: list[float] | None = None) -> "Blend":
        """Weighted average of K checkpoints; uniform when `weights` is None."""
        if not names:
            raise ValueError("a soup needs at least one checkpoint")
        weights = weights if weights is not None else [1.0 / len(names)] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"{len(names)} checkpoints but {len(weights)} weights")
        return Blend(tuple(zip(names, weights)))

    def describe(self) -> str:
        return " + ".join(f"{w:.3g}·{n}" for n, w in self.parts)


class WeightMixer:
    """Pristine endpoint checkpoints and the in-place merge into a decoder's serving weights."""

    def __init__(self, decoder: FastDecoder):
        self.decoder = decoder
        self.target = decoder.flat
        self.reference = dict(decoder.model.named_parameters())
        self.endpoints: dict[str, Tensor] = {}

    def flat_from_state(self, state: dict[str, Tensor]) -> Tensor:
        """Pack a decoder state dict into a flat tensor laid out like the serving buffer."""
        return torch.cat([state[name].reshape(-1).to(self.target.dtype)
                          for name in self.reference]).to(self.target.device)

    def add(self, name: str, source: str | os.PathLike | dict[str, Tensor] | Tensor) -> None:
        """Register an endpoint from a safetensors file/folder, a state dict, or a flat tensor
        (a flat tensor is kept by reference: no copy, e.g. the base decoder's own buffer)."""
        if isinstance(source, Tensor):
            if source.shape != self.target.shape or source.dtype != self.target.dtype:
                raise ValueError(f"endpoint {name!r}: flat tensor {tuple(source.shape)} {source.dtype} does not match "
                                 f"the serving buffer {tuple(self.target.shape)} {self.target.dtype}")
            self.endpoints[name] = source
            return
        state = source if isinstance(source, dict) else load_state(source, self.reference)
        self.endpoints[name] = self.flat_from_state(state)

    @torch.no_grad()
    def apply(self, blend: Blend) -> float:
        """Write the blend into the serving weights in place (and an int8 decoder's copies from them); returns the
        seconds it took."""
        missing = [n for n, _ in blend.parts if n not in self.endpoints]
        if missing:
            raise ValueError(f"unknown checkpoint(s) {missing}; loaded: {sorted(self.endpoints)}")
        t = time.perf_counter()
        parts = [(self.endpoints[n], w) for n, w in blend.parts]
        if len(parts) == 1:
            self.target.copy_(parts[0][0])
        elif len(parts) == 2:
            (a, _), (b, wb) = parts
            torch.lerp(a, b, wb, out=self.target)
        else:
            torch.mul(parts[0][0], parts[0][1], out=self.target)
            for ep, w in parts[1:]:
                self.target.add_(ep, alpha=w)
        self.decoder.requantize()
        return time.perf_counter() - t
