"""Merge modes: what the λ slider blends (paper Section 2.4), one registry entry each.

A `MergeMode` says everything the product needs to know about one way of blending checkpoints: its ASCII key (the
API value), the musician's words for it and for its slider, what λ = 0 and λ = 1 mean, whether it uses λ at all, the
blend it makes, which checkpoints it needs, the points the blind A/B offers and the evaluation's family of points.
The app's radio and help, the A/B systems (`engine.studio.core.ab_systems`) and the evaluation's fronts
(`training.evaluate.plan`) all read `MERGE_MODES`; adding a mode is one `register` call:

    register(MergeMode("q-d+", "Further than θ_d (task arithmetic)", ..., make=lambda lam, models:
                       Blend(((\"q\", 1.0), (\"d\", lam), (\"base\", -lam)))))

`models` is the list of trained checkpoints loaded besides the base, θ_q ("q") and θ_d ("d") first where the
caller has them, then any others (the β models of the soup).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from engine.merge import Blend

BlendFactory = Callable[[float, Sequence[str]], Blend]  # (λ, the loaded trained checkpoints) -> the blend


@dataclass(frozen=True)
class MergeMode:
    key: str  # the API value: ASCII, stable
    label: str  # the musician's words, the technical name in brackets
    help: str  # what the slider's ends mean (or why it is not used)
    slider: str  # the slider's label in this mode
    name: str  # the technical name, shown with λ on the takes ("θ_q ↔ θ_d λ=0.50")
    make: BlendFactory
    uses_lambda: bool = True
    needs: tuple[str, ...] = ("q",)  # checkpoints that must be loaded
    min_models: int = 1  # trained checkpoints that must be loaded (the soup: 3)
    aliases: tuple[str, ...] = ()  # earlier API values still accepted
    ab_name: str = ""  # the blind A/B's name of its systems ("" = not offered)
    ab_points: tuple[float, ...] = ()  # the λ values the blind A/B offers (one system when λ is not used)
    family: str = ""  # the evaluation's family of points ("" = not evaluated)
    eval_every: int = 1  # the evaluation measures every n-th λ of its grid (> 1: a coarse reference, --quick skips it)
    ends: tuple[str, str, str] = ("Safest", "Balanced", "Most varied")  # the presets' words for λ = 0, 0.5, 1

    def __post_init__(self):
        if not self.key.isascii() or not self.key or " " in self.key:
            raise ValueError(f"a merge mode's key is ASCII without spaces, got {self.key!r}")
        if self.eval_every < 1 or self.min_models < 1:
            raise ValueError("eval_every and min_models must be ≥ 1")

    def available(self, models: Sequence[str]) -> bool:
        """Whether this mode can blend with these trained checkpoints loaded."""
        return all(n in models for n in self.needs) and len(models) >= self.min_models

    def blend(self, lam: float | None, models: Sequence[str]) -> Blend:
        """The blend at λ (ignored, may be None, when the mode does not use it)."""
        return self.make(lam if self.uses_lambda else 0.0, models)

    def caption(self, lam: float | None) -> str:
        """How the takes are titled: the technical name, with λ where it matters."""
        return f"{self.name} λ={float(lam):.2f}" if self.uses_lambda else self.name

    def file_tag(self, lam: float | None) -> str:
        """What the file names carry: the mode's key, and λ where it matters ("q-d-lam0.50", "soup")."""
        return f"{self.key}-lam{float(lam):.2f}" if self.uses_lambda else self.key

    def presets(self) -> list[tuple[str, float]]:
        """The preset buttons' labels and λ: the slider's ends in this mode's words, and its middle."""
        low, middle, high = self.ends
        return [(f"{low} (λ = 0)", 0.0), (f"{middle} (λ = 0.5)", 0.5), (f"{high} (λ = 1)", 1.0)]

    def ab_systems(self, models: Sequence[str]) -> list[tuple[str, Blend]]:
        """(label, blend) of each system this mode offers the blind A/B."""
        if not self.ab_name or not self.available(models):
            return []
        if not self.uses_lambda:
            return [(self.ab_name, self.blend(None, models))]
        return [(f"{self.ab_name} λ={x:g}", self.blend(x, models)) for x in self.ab_points]


MERGE_MODES: dict[str, MergeMode] = {}


def register(mode: MergeMode) -> MergeMode:
    """Add a mode (its key and aliases must be new); returns it."""
    taken = {alias for m in MERGE_MODES.values() for alias in (m.key, *m.aliases)}
    clash = {mode.key, *mode.aliases} & taken
    if clash:
        raise ValueError(f"merge mode name(s) {sorted(clash)} already registered")
    MERGE_MODES[mode.key] = mode
    return mode


def unregister(key: str) -> None:
    """Remove a mode (tests that register their own)."""
    MERGE_MODES.pop(key, None)


def merge_mode(name, choices: Sequence[MergeMode] | None = None) -> MergeMode:
    """The mode named by its key or an alias, among `choices` (default: every registered mode)."""
    modes = list(MERGE_MODES.values()) if choices is None else list(choices)
    for mode in modes:
        if isinstance(name, str) and name in (mode.key, *mode.aliases):
            return mode
    raise ValueError(f"unknown mode {name!r}; choose one of {[m.key for m in modes]}")


def available_modes(models: Sequence[str]) -> list[MergeMode]:
    return [m for m in MERGE_MODES.values() if m.available(models)]


register(MergeMode(
    "q-d", "Safe ↔ varied takes (θ_q ↔ θ_d)",
    "0 = the quality model θ_q (safest takes), 1 = the diversity model θ_d (most varied takes)",
    "Safe ↔ varied (λ)", "θ_q ↔ θ_d", lambda lam, models: Blend.lerp("q", "d", lam), needs=("q", "d"),
    aliases=("θ_q ↔ θ_d",), ab_name="merged", ab_points=(0.0, 0.5, 1.0), family="LERP(θ_q, θ_d)"))
register(MergeMode(
    "q-base", "Safe ↔ original model (θ_q ↔ base)",
    "0 = the quality model θ_q, 1 = the original base model (no distillation)",
    "Quality model ↔ original (λ)", "θ_q ↔ base", lambda lam, models: Blend.lerp("q", "base", lam),
    aliases=("θ_q ↔ base",), family="LERP(θ_q, base)", eval_every=4,
    ends=("Quality model", "Halfway", "Original model")))
register(MergeMode(
    "soup", "Average of all trained models (uniform soup)",
    "not used: the soup averages θ_q, θ_d and the β models equally", "λ (not used by the soup)", "uniform soup",
    lambda lam, models: Blend.soup(list(models)), uses_lambda=False, needs=("q", "d"), min_models=3,
    aliases=("uniform soup",), ab_name="uniform soup", family="uniform soup"))
