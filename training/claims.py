"""The paper's claims, tested on measured points of `training.evaluate`: one function per claim.

Each takes the measured families on one pair of axes (`Families`: quality and diversity names) and returns a row
{claim, holds, parts, detail}. A claim is split into parts, each tested on a paired comparison over prompts (the
same prompts and seeds for every point; 95 % prompt-bootstrap interval): a part holds (True) only when its
interval lies on the claimed side (an inconclusive interval does not hold), and is None when the points cannot
test it. `verdict` turns the parts into "yes" (every part holds), "no" (no tested part holds), "partly" (some do,
or every tested part does but some could not be tested) or "not testable" (none could). "Matches" and "at least
as good" are non-inferiority tests against margins stated in this file before the measurements they judge.
`claims` tests every claim on each pair of `AXES`: the exact metrics read from nano's tokens (`engine.exact`) and
the learned scorers (the stand-ins for MuLan/CLAP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from engine.cfg import DEFAULT_NEGATIVE_PROMPT, PAPER_CFG, PAPER_GAMMA, CfgSetting
from engine.modes import MERGE_MODES
from training.frontier import area_difference, bootstrap, spearman
from training.heldout import HeldoutResult

# the evaluation's families of points
CFG_NEG, CFG_UNCOND = "CFG γ (negative prompt)", "CFG γ (unconditional)"
LERP_QD, LERP_QB = MERGE_MODES["q-d"].family, MERGE_MODES["q-base"].family  # the merge modes' fronts
TEMP_BASE, TEMP_Q = "temperature (base)", "temperature (θ_q)"
BETA_MODEL = "β model "  # families "β model N": models trained with β = N, between θ_q (β = 0) and θ_d

AXES = {"exact": ("exact_quality", "event_diversity"), "learned": ("quality", "diversity")}  # (quality, diversity)

# thresholds of the claims, with reasons
YES, PARTLY, NO, UNTESTABLE = "yes", "partly", "no", "not testable"
# "θ_q matches its teacher's quality" and "λ = 0.5 is at least as good as a β model": the paired 95 % interval of
# the difference lies above −margin. Quality margins: 0.25 of exact quality (0 … 6: a twentieth of the adherence
# range, ω = 5) and 0.25 of the learned quality score (its spread over the points is of the same size); diversity:
# 0.03 of event diversity or of E's diversity (both 0 … 1). Written before the v2 models were measured.
MARGIN = {"exact_quality": 0.25, "quality": 0.25, "event_diversity": 0.03, "diversity": 0.03}
HALF_COST_RATIO = 1.5  # "about half the inference cost": the teacher's time per clip is at least 1.5× θ_q's
HACK_NOISE_RISE = 0.05  # θ_d games E if its share of clips with noise/distortion tokens rises by more than this …
HACK_DRUMS_RISE = 0.15  # … or its share of clips with drums rises by more than this (drums move E the most)


def teacher_fronts(teacher: CfgSetting) -> tuple[str, str]:
    """The γ-fronts with the teacher's cuts (α, top-p): with the negative prompt and unconditional."""
    return (dataclasses.replace(teacher, negative=DEFAULT_NEGATIVE_PROMPT).family,
            dataclasses.replace(teacher, negative="").family)


@dataclass(frozen=True)
class Point:
    family: str
    x: float  # the swept parameter: γ, temperature, λ or training step
    blend: tuple[tuple[str, float], ...] = (("base", 1.0),)
    guidance: float = 1.0
    negative: str = DEFAULT_NEGATIVE_PROMPT
    temperature: float = 1.0
    plausibility: float = 0.0  # CFG's plausibility mask α (0 = the paper's CFG)
    top_p: float = 0.0  # nucleus truncation (0 = off)

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


def verdict(parts: dict[str, bool | None]) -> str:
    """yes / partly / no / not testable from the claim's parts (module docstring)."""
    tested = [v for v in parts.values() if v is not None]
    if not tested:
        return UNTESTABLE
    if not any(tested):
        return NO
    return YES if len(tested) == len(parts) and all(tested) else PARTLY


def parts_text(parts: dict[str, bool | None]) -> str:
    mark = {True: "holds", False: "does not hold", None: "not testable"}
    return "; ".join(f"{name}: {mark[v]}" for name, v in parts.items())


def row(claim: str, parts: dict[str, bool | None], detail: str) -> dict:
    return dict(claim=claim, holds=verdict(parts), parts=parts, detail=f"{parts_text(parts)}. {detail}")


def claim_cfg(f: Families, family: str = CFG_NEG, uncond: str = CFG_UNCOND, name: str = "CFG") -> dict | None:
    cfg = f(family)
    if len(cfg) < 2:
        return None
    rq = spearman([m.point.x for m in cfg], [m.mean(f.q) for m in cfg])
    rd = spearman([m.point.x for m in cfg], [m.mean(f.d) for m in cfg])
    detail = f"Spearman(γ, quality) = {rq:+.2f}, Spearman(γ, diversity) = {rd:+.2f}"
    g, u, off = f.at(family, PAPER_GAMMA), f.at(uncond, PAPER_GAMMA), f.at(family, 1.0) or f.at(CFG_NEG, 1.0)
    parts: dict[str, bool | None] = dict.fromkeys(("quality rises", "diversity falls", "negative beats unconditional"))
    if g is not None and off is not None:
        dq, dd = f.paired(g, off, f.q), f.paired(g, off, f.d)
        parts |= {"quality rises": dq[1][0] > 0, "diversity falls": dd[1][1] < 0}
        detail += f"; γ = 3 − no CFG: quality {with_ci(dq)}, diversity {with_ci(dd)}"
    if g is not None and u is not None:
        dn = f.paired(g, u, f.q)
        parts["negative beats unconditional"] = dn[1][0] > 0
        detail += f"; at γ = 3, quality with the negative prompt − unconditional {with_ci(dn)}"
    return row(f"1. {name} raises quality and lowers diversity as γ grows; negative prompting beats unconditional",
               parts, detail)


def claim_distilled(f: Families, speed: dict | None, teacher: CfgSetting) -> dict | None:
    q0, g = f(LERP_QD)[0], f.at(teacher.family, teacher.guidance)
    if g is None:
        return None
    diff = f.paired(q0, g, f.q)
    ratio = (speed["teacher"] / speed["θ_q"] if speed
             else g.result.sample_s_per_clip / q0.result.sample_s_per_clip)
    timing = f": {speed['teacher'] * 1000:.0f} vs {speed['θ_q'] * 1000:.0f} ms)" if speed else ")"
    margin = MARGIN.get(f.q, 0.0)
    parts = {f"quality matches (paired CI above −{margin:g})": diff[1][0] >= -margin,
             f"cost about half (ratio ≥ {HALF_COST_RATIO:g})": ratio >= HALF_COST_RATIO}
    return row(f"2. θ_q matches its CFG teacher's quality ({teacher.description}) without CFG, at about half the "
               f"inference cost", parts,
               f"quality θ_q {q0.mean(f.q):.3f} vs the teacher {g.mean(f.q):.3f}, θ_q − teacher {with_ci(diff)} "
               f"(paired over prompts); sampling time per clip teacher / θ_q = {ratio:.2f}× (measured together in "
               f"this run" + timing)


def claim_diversity(f: Families) -> dict:
    base, q0, d1 = f.at(CFG_NEG, 1.0), f(LERP_QD)[0], f(LERP_QD)[-1]
    q_vs_base, qd_div = f.paired(q0, base, f.d), f.paired(d1, q0, f.d)
    qd_qual = f.paired(d1, q0, f.q)
    parts = {"θ_q less diverse than the base": q_vs_base[1][1] < 0, "θ_d more diverse than θ_q": qd_div[1][0] > 0,
             "θ_d costs quality": qd_qual[1][1] < 0}
    return row("3. CFG distillation alone (β = 0) lowers diversity; β > 0 raises it, with a quality cost", parts,
               f"diversity base {base.mean(f.d):.3f}, θ_q {q0.mean(f.d):.3f}, θ_d {d1.mean(f.d):.3f}; quality θ_q "
               f"{q0.mean(f.q):.3f}, θ_d {d1.mean(f.q):.3f}. Paired over prompts: diversity θ_q − base "
               f"{with_ci(q_vs_base)}, θ_d − θ_q {with_ci(qd_div)}; quality θ_d − θ_q {with_ci(qd_qual)}")


def claim_pareto(f: Families, teacher: CfgSetting) -> dict:
    lerp, parts, details = f(LERP_QD), {}, []
    for other in dict.fromkeys((CFG_NEG, teacher.family, TEMP_BASE, TEMP_Q)):
        if len(f(other)) < 2 or len(lerp) < 2:
            continue
        fd = f.front_difference(lerp, f(other))
        if fd["x_hi"] <= fd["x_lo"]:
            parts[f"vs {other}"] = None
            details.append(f"vs {other}: no diversity overlap")
            continue
        parts[f"vs {other}"] = fd["ci"][0] > 0
        details.append(f"vs {other}: area difference {fd['difference']:+.4f} (95 % CI {fd['ci'][0]:+.4f} … "
                       f"{fd['ci'][1]:+.4f}) over diversity {fd['x_lo']:.3f}–{fd['x_hi']:.3f}")
    return row("4. The LERP front Pareto-dominates the CFG γ-fronts and temperature sampling over their overlap",
               parts, "; ".join(details))


def _excess(f: Families, lerp: list[Measured], idx=None) -> float:
    """Mean normalised quality of the inner λ points above the straight line from θ_q to θ_d."""
    q_0, q_1 = lerp[0].mean(f.q, idx), lerp[-1].mean(f.q, idx)
    if q_0 == q_1:
        return float("nan")
    return float(np.mean([(m.mean(f.q, idx) - q_1) / (q_0 - q_1) - (1 - m.point.x) for m in lerp[1:-1]]))


def _diagonal(f: Families, lerp: list[Measured]) -> tuple[str, bool | None]:
    """Whether quality along λ lies above the straight line between θ_q and θ_d (None: no trade-off to test):
    the θ_d − θ_q differences must be significant (paired), then the excess's interval must lie above 0."""
    dd, dq = f.paired(lerp[-1], lerp[0], f.d), f.paired(lerp[0], lerp[-1], f.q)
    if dd[1][0] <= 0:
        return (f"diagonal not testable: θ_d is not more diverse than θ_q (θ_d − θ_q {with_ci(dd)}), so there is "
                f"no trade-off to lie above the diagonal of"), None
    if dq[1][0] <= 0:
        return (f"diagonal not testable: θ_d costs no significant quality (θ_q − θ_d {with_ci(dq)}), so there is "
                f"no trade-off along λ"), None
    excess = _excess(f, lerp), bootstrap(lambda idx: _excess(f, lerp, idx), f.prompts, reps=f.reps)
    return f"normalised quality above the diagonal by {with_ci(excess)}", excess[1][0] > 0


def claim_lambda(f: Families) -> dict | None:
    lerp = f(LERP_QD)
    if len(lerp) < 3:
        return None
    detail, diagonal = _diagonal(f, lerp)
    parts: dict[str, bool | None] = {}
    half = f.at(LERP_QD, 0.5)
    betas = sorted((n for n in f.by_x if n.startswith(BETA_MODEL)), key=lambda n: float(n[len(BETA_MODEL):]))
    if not betas:
        parts["λ = 0.5 at least as good as an intermediate β"] = None
        detail += "; no intermediate-β models to compare λ = 0.5 with"
    for name in betas:
        if f(name) and half is not None:
            dq, dd = f.paired(half, f(name)[0], f.q), f.paired(half, f(name)[0], f.d)
            mq, md = MARGIN.get(f.q, 0.0), MARGIN.get(f.d, 0.0)
            parts[f"λ = 0.5 at least as good as {name} (CIs above −{mq:g} / −{md:g})"] = (dq[1][0] >= -mq
                                                                                       and dd[1][0] >= -md)
            detail += f"; λ = 0.5 − {name}: quality {with_ci(dq)}, diversity {with_ci(dd)} (paired over prompts)"
    parts["quality along λ above the diagonal"] = diagonal
    return row("5. λ = 0.5 is at least as good as intermediate β; quality along λ lies above the diagonal", parts,
               detail)


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
                holds=NO if gamed else YES, parts={"no sign of gaming": not gamed},
                detail=detail + (" — signs of gaming" if gamed else " — no sign of gaming"))


def claims_on(f: Families, speed: dict | None, teacher: CfgSetting) -> list[dict]:
    """Every claim the measured families can test, on the axes of `f`."""
    out = [claim_cfg(f, name="CFG (the paper's)")]
    if teacher.cuts:
        out.append(claim_cfg(f, *teacher_fronts(teacher),
                             f"CFG with the teacher's truncation ({teacher.cuts.strip().replace(' ', ', ')})"))
    if f(LERP_QD) and f(CFG_NEG):
        out += [claim_distilled(f, speed, teacher), claim_diversity(f), claim_pareto(f, teacher), claim_lambda(f)]
    return [c for c in out if c is not None]


def claims(results: dict[str, list[Measured]], settings, speed: dict | None = None,
           teacher: CfgSetting | None = None) -> list[dict]:
    """The claims on every pair of axes the points measured (`settings`: prompts and bootstrap repetitions), each
    row with its `axis`; then the reward-hacking check (axis-free)."""
    teacher = teacher or PAPER_CFG
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
