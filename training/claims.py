"""The paper's claims, tested on measured points of `training.evaluate`: one function per claim.

Each takes the measured families (`Families`) and returns a row {claim, holds (True/False/None = not testable),
detail}. Intervals are 95 % prompt bootstraps of paired differences (the same prompts and seeds for every point).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.service import DEFAULT_NEGATIVE_PROMPT
from training.frontier import area_difference, bootstrap, spearman
from training.heldout import HeldoutResult

# the evaluation's families of points
CFG_NEG, CFG_UNCOND = "CFG γ (negative prompt)", "CFG γ (unconditional)"
LERP_QD, LERP_QB = "LERP(θ_q, θ_d)", "LERP(θ_q, base)"
TEMP_BASE, TEMP_Q = "temperature (base)", "temperature (θ_q)"
INTERMEDIATE_BETAS = ("β model 5", "β model 10")

# thresholds of the claims, with reasons
PAPER_GAMMA = 3.0  # the CFG γ the paper distils and compares against
QUALITY_MATCH_SEMS = 1.0  # "θ_q matches CFG quality": at most one standard error below it
HACK_NOISE_RISE = 0.05  # θ_d games E if its share of clips with noise/distortion tokens rises by more than this …
HACK_DRUMS_RISE = 0.15  # … or its share of clips with drums rises by more than this (drums move E the most)


@dataclass(frozen=True)
class Point:
    family: str
    x: float  # the swept parameter: γ, temperature, λ or training step
    blend: tuple[tuple[str, float], ...] = (("base", 1.0),)
    guidance: float = 1.0
    negative: str = DEFAULT_NEGATIVE_PROMPT
    temperature: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.family} @ {self.x:g}"


@dataclass
class Measured:
    point: Point
    result: HeldoutResult

    def mean(self, name: str, idx=None) -> float:
        return self.result.mean(name, idx)

    def sem(self, name: str) -> float:
        return self.result.sem(name)

    def xy(self, idx=None) -> tuple[float, float]:
        return self.mean("diversity", idx), self.mean("quality", idx)


@dataclass
class Families:
    """Measured points by family, each sorted by its swept parameter, and the bootstrap over prompts."""

    results: dict[str, list[Measured]]
    prompts: int
    reps: int
    by_x: dict = field(init=False)

    def __post_init__(self):
        self.by_x = {name: sorted(ms, key=lambda m: m.point.x) for name, ms in self.results.items()}

    def __call__(self, name: str) -> list[Measured]:
        return self.by_x.get(name, [])

    def at(self, name: str, x: float) -> Measured | None:
        return next((m for m in self(name) if m.point.x == x), None)

    def paired(self, a: Measured, b: Measured, name: str) -> tuple[float, tuple[float, float]]:
        """a − b on the same prompts and seeds, with a prompt-bootstrap 95 % interval."""
        return a.mean(name) - b.mean(name), bootstrap(lambda idx: a.mean(name, idx) - b.mean(name, idx),
                                                      self.prompts, reps=self.reps)

    def front_difference(self, a: list[Measured], b: list[Measured]) -> dict:
        d = area_difference([m.xy() for m in a], [m.xy() for m in b])
        ci = bootstrap(lambda idx: area_difference([m.xy(idx) for m in a], [m.xy(idx) for m in b])["difference"],
                       self.prompts, reps=self.reps)
        return dict(d, ci=ci)


def with_ci(d: tuple[float, tuple[float, float]]) -> str:
    return f"{d[0]:+.3f} (95 % CI {d[1][0]:+.3f} … {d[1][1]:+.3f})"


def claim_cfg(f: Families) -> dict | None:
    cfg = f(CFG_NEG)
    if len(cfg) < 2:
        return None
    rq = spearman([m.point.x for m in cfg], [m.mean("quality") for m in cfg])
    rd = spearman([m.point.x for m in cfg], [m.mean("diversity") for m in cfg])
    detail = f"Spearman(γ, quality) = {rq:+.2f}, Spearman(γ, diversity) = {rd:+.2f}"
    holds = rq > 0 and rd < 0
    g, u = f.at(CFG_NEG, PAPER_GAMMA), f.at(CFG_UNCOND, PAPER_GAMMA)
    if g is not None and u is not None:
        diff = g.mean("quality") - u.mean("quality")
        se = np.hypot(g.sem("quality"), u.sem("quality"))
        detail += f"; at γ = 3, quality with the negative prompt − unconditional = {diff:+.3f} ± {se:.3f}"
        holds = holds and diff > 0
    return dict(claim="1. CFG raises quality and lowers diversity as γ grows; negative prompting beats "
                      "unconditional", holds=holds, detail=detail)


def claim_distilled(f: Families, speed: dict | None) -> dict:
    q0, g3 = f(LERP_QD)[0], f.at(CFG_NEG, PAPER_GAMMA)
    diff = q0.mean("quality") - g3.mean("quality")
    ratio = (speed["CFG γ=3"] / speed["θ_q"] if speed
             else g3.result.sample_s_per_clip / q0.result.sample_s_per_clip)
    timing = f": {speed['CFG γ=3'] * 1000:.0f} vs {speed['θ_q'] * 1000:.0f} ms)" if speed else ")"
    return dict(claim="2. θ_q matches CFG(γ=3) quality without CFG, at about half the inference cost",
                holds=diff >= -QUALITY_MATCH_SEMS * g3.sem("quality"),
                detail=f"quality θ_q {q0.mean('quality'):.3f} ± {q0.sem('quality'):.3f} vs CFG γ=3 "
                       f"{g3.mean('quality'):.3f} ± {g3.sem('quality'):.3f} (difference {diff:+.3f}); "
                       f"sampling time per clip CFG / θ_q = {ratio:.2f}× (measured together in this run" + timing)


def claim_diversity(f: Families) -> dict:
    base, q0, d1 = f.at(CFG_NEG, 1.0), f(LERP_QD)[0], f(LERP_QD)[-1]
    q_vs_base, qd_div = f.paired(q0, base, "diversity"), f.paired(d1, q0, "diversity")
    qd_qual = f.paired(d1, q0, "quality")
    return dict(claim="3. CFG distillation alone (β = 0) lowers diversity; β > 0 raises it, with a quality cost",
                holds=q_vs_base[1][1] < 0 and qd_div[1][0] > 0 and qd_qual[0] < 0,
                detail=f"diversity base {base.mean('diversity'):.3f}, θ_q {q0.mean('diversity'):.3f}, "
                       f"θ_d {d1.mean('diversity'):.3f}; quality θ_q {q0.mean('quality'):.3f}, "
                       f"θ_d {d1.mean('quality'):.3f}. Paired over prompts: diversity θ_q − base {with_ci(q_vs_base)}, "
                       f"θ_d − θ_q {with_ci(qd_div)}; quality θ_d − θ_q {with_ci(qd_qual)}")


def claim_pareto(f: Families) -> dict:
    lerp, parts, holds, compared = f(LERP_QD), [], True, 0
    for other in (CFG_NEG, TEMP_BASE, TEMP_Q):
        if len(f(other)) < 2 or len(lerp) < 2:
            continue
        fd = f.front_difference(lerp, f(other))
        if fd["x_hi"] <= fd["x_lo"]:
            parts.append(f"vs {other}: no diversity overlap, not testable")
            continue
        compared += 1
        holds = holds and fd["ci"][0] > 0
        parts.append(f"vs {other}: area difference {fd['difference']:+.4f} (95 % CI {fd['ci'][0]:+.4f} … "
                     f"{fd['ci'][1]:+.4f}) over diversity {fd['x_lo']:.3f}–{fd['x_hi']:.3f}")
    return dict(claim="4. The LERP front Pareto-dominates the CFG γ-front and temperature sampling over their overlap",
                holds=holds and compared > 0, detail="; ".join(parts))


def _diagonal(lerp: list[Measured]) -> tuple[str, bool | None]:
    """Where quality along λ lies relative to the straight line between θ_q and θ_d (None: no trade-off to test)."""
    q_0, q_1 = lerp[0].mean("quality"), lerp[-1].mean("quality")
    d_0, d_1 = lerp[0].mean("diversity"), lerp[-1].mean("diversity")
    inner = lerp[1:-1]
    q_excess = [((m.mean("quality") - q_1) / (q_0 - q_1) - (1 - m.point.x)) if q_0 != q_1 else np.nan for m in inner]
    d_excess = [((m.mean("diversity") - d_0) / (d_1 - d_0) - m.point.x) if d_1 != d_0 else np.nan for m in inner]
    if d_1 - d_0 <= lerp[-1].sem("diversity"):
        return (f"diagonal not testable: θ_d is not more diverse than θ_q (diversity {d_0:.3f} → {d_1:.3f}), "
                f"so there is no trade-off to lie above the diagonal of"), None
    if q_0 - q_1 <= lerp[0].sem("quality"):
        return (f"diagonal not testable: θ_d costs no quality (θ_q {q_0:.3f}, θ_d {q_1:.3f}), so there is no "
                f"trade-off along λ (normalised diversity above the diagonal by {np.nanmean(d_excess):+.3f})"), None
    return (f"normalised quality above the diagonal by {np.nanmean(q_excess):+.3f} on average "
            f"(normalised diversity: {np.nanmean(d_excess):+.3f})"), bool(np.nanmean(q_excess) > 0)


def claim_lambda(f: Families) -> dict | None:
    lerp = f(LERP_QD)
    if len(lerp) < 3:
        return None
    detail, diagonal = _diagonal(lerp)
    verdicts = [] if diagonal is None else [diagonal]
    half = f.at(LERP_QD, 0.5)
    if not any(f(n) for n in INTERMEDIATE_BETAS):
        detail += "; no intermediate-β models to compare λ = 0.5 with"
    for name in INTERMEDIATE_BETAS:
        if f(name) and half is not None:
            dq, dd = f.paired(half, f(name)[0], "quality"), f.paired(half, f(name)[0], "diversity")
            # "at least as good": λ = 0.5 is not significantly worse than the β model on either axis
            verdicts.append(dq[1][1] >= 0 and dd[1][1] >= 0)
            detail += f"; λ = 0.5 − {name}: quality {with_ci(dq)}, diversity {with_ci(dd)} (paired over prompts)"
    return dict(claim="5. λ = 0.5 is at least as good as intermediate β; quality along λ lies above the diagonal",
                holds=all(verdicts) if verdicts else None, detail=detail)


def claim_no_hacking(f: Families) -> dict:
    q0, d1 = f(LERP_QD)[0], f(LERP_QD)[-1]
    q, d = q0.result, d1.result
    detail = (f"θ_q → θ_d: E diversity {q0.mean('diversity'):.3f} → {d1.mean('diversity'):.3f}, musical (event) "
              f"diversity {q0.mean('event_diversity'):.3f} → {d1.mean('event_diversity'):.3f}, clips with drums "
              f"{q.drums:.2f} → {d.drums:.2f}, with noise/distortion tokens {q.degraded:.2f} → {d.degraded:.2f}")
    musically_flat = (d1.mean("event_diversity") <= q0.mean("event_diversity")
                      and d1.mean("diversity") > q0.mean("diversity"))
    gamed = d.degraded > q.degraded + HACK_NOISE_RISE or d.drums > q.drums + HACK_DRUMS_RISE or musically_flat
    return dict(claim="Reward hacking check: does θ_d game E (drums, noise) rather than become musically diverse?",
                holds=not gamed, detail=detail + (" — signs of gaming" if gamed else " — no sign of gaming"))


def claims(results: dict[str, list[Measured]], settings, speed: dict | None = None) -> list[dict]:
    """Every claim that the measured families can test (`settings`: prompts and bootstrap repetitions)."""
    f = Families(results, settings.prompts, settings.bootstrap)
    out = [claim_cfg(f)]
    if f(LERP_QD) and f(CFG_NEG):
        out += [claim_distilled(f, speed), claim_diversity(f), claim_pareto(f), claim_lambda(f), claim_no_hacking(f)]
    return [c for c in out if c is not None]
