"""The paper's claims, tested on measured points of `training.evaluate`: one function per claim.

Each takes the measured families on one pair of axes (`Families`: quality and diversity names) and returns a row
{claim, holds (True/False/None = not testable), detail}. `claims` tests every claim on each pair of `AXES`: the
exact metrics read from nano's tokens (`engine.exact`) and the learned scorers (the stand-ins for MuLan/CLAP).
Intervals are 95 % prompt bootstraps of paired differences (the same prompts and seeds for every point).
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
BETA_MODEL = "β model "  # families "β model N": models trained with β = N, between θ_q (β = 0) and θ_d

AXES = {"exact": ("exact_quality", "event_diversity"), "learned": ("quality", "diversity")}  # (quality, diversity)

# thresholds of the claims, with reasons
PAPER_GAMMA = 3.0  # the CFG γ the paper distils and compares against
QUALITY_MATCH_SEMS = 1.0  # "θ_q matches CFG quality": at most one standard error below it
HACK_NOISE_RISE = 0.05  # θ_d games E if its share of clips with noise/distortion tokens rises by more than this …
HACK_DRUMS_RISE = 0.15  # … or its share of clips with drums rises by more than this (drums move E the most)


@dataclass(frozen=True)
class Teacher:
    """The CFG setting θ_q is distilled from (chosen by `training.teacher_sweep`; default: the paper's)."""

    guidance: float = PAPER_GAMMA
    negative: str = DEFAULT_NEGATIVE_PROMPT
    plausibility: float = 0.0

    @property
    def family(self) -> str:
        """The γ-front this teacher lies on: the paper's CFG, or CFG with the teacher's mask and negative."""
        if self.plausibility == 0:
            return CFG_NEG if self.negative else CFG_UNCOND
        return f"CFG γ ({'negative prompt' if self.negative else 'unconditional'}, α={self.plausibility:g})"

    @property
    def neg_family(self) -> str:
        """The γ-front with the negative prompt and the teacher's mask (the paper's CFG_NEG without a mask)."""
        return CFG_NEG if self.plausibility == 0 else f"CFG γ (negative prompt, α={self.plausibility:g})"

    @property
    def uncond_family(self) -> str:
        return CFG_UNCOND if self.plausibility == 0 else f"CFG γ (unconditional, α={self.plausibility:g})"

    @property
    def label(self) -> str:
        mask = f", α = {self.plausibility:g}" if self.plausibility else ""
        return f"γ = {self.guidance:g}{mask}, {'negative prompt' if self.negative else 'unconditional'}"


@dataclass(frozen=True)
class Point:
    family: str
    x: float  # the swept parameter: γ, temperature, λ or training step
    blend: tuple[tuple[str, float], ...] = (("base", 1.0),)
    guidance: float = 1.0
    negative: str = DEFAULT_NEGATIVE_PROMPT
    temperature: float = 1.0
    plausibility: float = 0.0  # CFG's plausibility mask α (0 = the paper's CFG)

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
    q: str = "quality"  # the quality axis: a per-prompt field of HeldoutResult
    d: str = "diversity"  # the diversity axis
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

    def xy(self, m: Measured, idx=None) -> tuple[float, float]:
        return m.mean(self.d, idx), m.mean(self.q, idx)

    def front_difference(self, a: list[Measured], b: list[Measured]) -> dict:
        d = area_difference([self.xy(m) for m in a], [self.xy(m) for m in b])
        ci = bootstrap(lambda idx: area_difference([self.xy(m, idx) for m in a],
                                                   [self.xy(m, idx) for m in b])["difference"],
                       self.prompts, reps=self.reps)
        return dict(d, ci=ci)


def with_ci(d: tuple[float, tuple[float, float]]) -> str:
    return f"{d[0]:+.3f} (95 % CI {d[1][0]:+.3f} … {d[1][1]:+.3f})"


def claim_cfg(f: Families, family: str = CFG_NEG, uncond: str = CFG_UNCOND, name: str = "CFG") -> dict | None:
    cfg = f(family)
    if len(cfg) < 2:
        return None
    rq = spearman([m.point.x for m in cfg], [m.mean(f.q) for m in cfg])
    rd = spearman([m.point.x for m in cfg], [m.mean(f.d) for m in cfg])
    detail = f"Spearman(γ, quality) = {rq:+.2f}, Spearman(γ, diversity) = {rd:+.2f}"
    holds = rq > 0 and rd < 0
    g, u = f.at(family, PAPER_GAMMA), f.at(uncond, PAPER_GAMMA)
    if g is not None and u is not None:
        diff = g.mean(f.q) - u.mean(f.q)
        se = np.hypot(g.sem(f.q), u.sem(f.q))
        detail += f"; at γ = 3, quality with the negative prompt − unconditional = {diff:+.3f} ± {se:.3f}"
        holds = holds and diff > 0
    return dict(claim=f"1. {name} raises quality and lowers diversity as γ grows; negative prompting beats "
                      "unconditional", holds=holds, detail=detail)


def claim_distilled(f: Families, speed: dict | None, teacher: Teacher) -> dict | None:
    q0, g = f(LERP_QD)[0], f.at(teacher.family, teacher.guidance)
    if g is None:
        return None
    diff = q0.mean(f.q) - g.mean(f.q)
    ratio = (speed["teacher"] / speed["θ_q"] if speed
             else g.result.sample_s_per_clip / q0.result.sample_s_per_clip)
    timing = f": {speed['teacher'] * 1000:.0f} vs {speed['θ_q'] * 1000:.0f} ms)" if speed else ")"
    return dict(claim=f"2. θ_q matches its CFG teacher's quality ({teacher.label}) without CFG, at about half the "
                      f"inference cost",
                holds=diff >= -QUALITY_MATCH_SEMS * g.sem(f.q),
                detail=f"quality θ_q {q0.mean(f.q):.3f} ± {q0.sem(f.q):.3f} vs the teacher "
                       f"{g.mean(f.q):.3f} ± {g.sem(f.q):.3f} (difference {diff:+.3f}); "
                       f"sampling time per clip teacher / θ_q = {ratio:.2f}× (measured together in this run" + timing)


def claim_diversity(f: Families) -> dict:
    base, q0, d1 = f.at(CFG_NEG, 1.0), f(LERP_QD)[0], f(LERP_QD)[-1]
    q_vs_base, qd_div = f.paired(q0, base, f.d), f.paired(d1, q0, f.d)
    qd_qual = f.paired(d1, q0, f.q)
    return dict(claim="3. CFG distillation alone (β = 0) lowers diversity; β > 0 raises it, with a quality cost",
                holds=q_vs_base[1][1] < 0 and qd_div[1][0] > 0 and qd_qual[0] < 0,
                detail=f"diversity base {base.mean(f.d):.3f}, θ_q {q0.mean(f.d):.3f}, "
                       f"θ_d {d1.mean(f.d):.3f}; quality θ_q {q0.mean(f.q):.3f}, "
                       f"θ_d {d1.mean(f.q):.3f}. Paired over prompts: diversity θ_q − base {with_ci(q_vs_base)}, "
                       f"θ_d − θ_q {with_ci(qd_div)}; quality θ_d − θ_q {with_ci(qd_qual)}")


def claim_pareto(f: Families, teacher: Teacher) -> dict:
    lerp, parts, holds, compared = f(LERP_QD), [], True, 0
    for other in dict.fromkeys((CFG_NEG, teacher.family, TEMP_BASE, TEMP_Q)):
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
    return dict(claim="4. The LERP front Pareto-dominates the CFG γ-fronts and temperature sampling over their overlap",
                holds=holds and compared > 0, detail="; ".join(parts))


def _diagonal(f: Families, lerp: list[Measured]) -> tuple[str, bool | None]:
    """Where quality along λ lies relative to the straight line between θ_q and θ_d (None: no trade-off to test)."""
    q_0, q_1 = lerp[0].mean(f.q), lerp[-1].mean(f.q)
    d_0, d_1 = lerp[0].mean(f.d), lerp[-1].mean(f.d)
    inner = lerp[1:-1]
    q_excess = [((m.mean(f.q) - q_1) / (q_0 - q_1) - (1 - m.point.x)) if q_0 != q_1 else np.nan for m in inner]
    d_excess = [((m.mean(f.d) - d_0) / (d_1 - d_0) - m.point.x) if d_1 != d_0 else np.nan for m in inner]
    if d_1 - d_0 <= lerp[-1].sem(f.d):
        return (f"diagonal not testable: θ_d is not more diverse than θ_q (diversity {d_0:.3f} → {d_1:.3f}), "
                f"so there is no trade-off to lie above the diagonal of"), None
    if q_0 - q_1 <= lerp[0].sem(f.q):
        return (f"diagonal not testable: θ_d costs no quality (θ_q {q_0:.3f}, θ_d {q_1:.3f}), so there is no "
                f"trade-off along λ (normalised diversity above the diagonal by {np.nanmean(d_excess):+.3f})"), None
    return (f"normalised quality above the diagonal by {np.nanmean(q_excess):+.3f} on average "
            f"(normalised diversity: {np.nanmean(d_excess):+.3f})"), bool(np.nanmean(q_excess) > 0)


def claim_lambda(f: Families) -> dict | None:
    lerp = f(LERP_QD)
    if len(lerp) < 3:
        return None
    detail, diagonal = _diagonal(f, lerp)
    verdicts = [] if diagonal is None else [diagonal]
    half = f.at(LERP_QD, 0.5)
    betas = sorted((n for n in f.by_x if n.startswith(BETA_MODEL)), key=lambda n: float(n[len(BETA_MODEL):]))
    if not betas:
        detail += "; no intermediate-β models to compare λ = 0.5 with"
    for name in betas:
        if f(name) and half is not None:
            dq, dd = f.paired(half, f(name)[0], f.q), f.paired(half, f(name)[0], f.d)
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


def claims_on(f: Families, speed: dict | None, teacher: Teacher) -> list[dict]:
    """Every claim the measured families can test, on the axes of `f`."""
    out = [claim_cfg(f, name="CFG (the paper's)")]
    if teacher.plausibility > 0:
        out.append(claim_cfg(f, teacher.neg_family, teacher.uncond_family, f"CFG with the teacher's mask (α = "
                                                                              f"{teacher.plausibility:g})"))
    if f(LERP_QD) and f(CFG_NEG):
        out += [claim_distilled(f, speed, teacher), claim_diversity(f), claim_pareto(f, teacher), claim_lambda(f)]
    return [c for c in out if c is not None]


def claims(results: dict[str, list[Measured]], settings, speed: dict | None = None,
           teacher: Teacher | None = None) -> list[dict]:
    """The claims on every pair of axes the points measured (`settings`: prompts and bootstrap repetitions), each
    row with its `axis`; then the reward-hacking check (axis-free)."""
    teacher = teacher or Teacher()
    some = next(m for ms in results.values() for m in ms)
    out = []
    for axis, (q, d) in AXES.items():
        if getattr(some.result, q) and getattr(some.result, d):
            f = Families(results, settings.prompts, settings.bootstrap, q, d)
            out += [dict(c, axis=axis) for c in claims_on(f, speed, teacher)]
    f = Families(results, settings.prompts, settings.bootstrap)
    if f(LERP_QD):
        out.append(dict(claim_no_hacking(f), axis="tokens and E"))
    return out
