"""Reproduce the paper's quality–diversity results on nano (Figures 1–4 and 6, Sections 3.2–3.4).

Every point is a way of sampling (a blend of checkpoints, CFG γ and negative prompt, temperature), measured on
`--prompts` held-out prompts with `--clips` clips each (seeded per prompt, the same for every point):
quality = ω·adherence + audio quality (mean over clips, then prompts), diversity = mean pairwise r_D with E
within a prompt's clips (and the Vendi score), each with its standard error over prompts. Points:
- CFG on the base, γ ∈ {1, 1.5, 2, 3, 4, 5, 7}, with the negative prompt and unconditional (Fig. 6);
- temperature sampling on the base and on θ_q (Fig. 3 baselines);
- LERP(θ_q, θ_d) for λ = 0, 0.05, …, 1 (Fig. 3–4), LERP(θ_q, base), the uniform soup of all β models;
- each β model along its training snapshots (`runs/*/snapshots`, Fig. 1 right / Fig. 2).
Outputs in `--out`: points.csv (every point with standard errors), fronts.png, lambda.png, training.png,
fronts.json (for the app), report.md (the claims, which hold and by how much). Results are cached per point
(cache.jsonl, keyed by the point, the settings and the checkpoints' and scorers' file hashes), so a rerun
only computes what changed.

    python -m training.evaluate                                  # full: writes weights/eval/
    python -m training.evaluate --quick --out runs/eval-quick    # a few minutes: CI smoke test
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import save_bytes, save_json
from engine.figures import PALETTE, quality_diversity_plot
from engine.merge import Blend
from engine.model import load_model
from engine.scorers import OMEGA, Scorers
from engine.service import DEFAULT_NEGATIVE_PROMPT, MusicService, Request
from training.distill import heldout_prompts
from training.frontier import area_difference, bootstrap, spearman
from training.nano_metrics import describe, event_distance

GAMMAS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
TEMPERATURES = (0.7, 0.85, 1.0, 1.15, 1.3)
CFG_NEG, CFG_UNCOND = "CFG γ (negative prompt)", "CFG γ (unconditional)"
LERP_QD, LERP_QB = "LERP(θ_q, θ_d)", "LERP(θ_q, base)"
TEMP_BASE, TEMP_Q = "temperature (base)", "temperature (θ_q)"


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
    quality: list[float]  # per prompt
    diversity: list[float]
    vendi: list[float]
    event_diversity: list[float]  # mean pairwise event distance of the clips' tokens (musical, not E)
    drums: float  # share of clips with drums
    degraded: float  # share of clips with noise/distortion tokens
    sample_s_per_clip: float

    def mean(self, name: str, idx=None) -> float:
        v = np.asarray(getattr(self, name))
        return float((v if idx is None else v[idx]).mean())

    def sem(self, name: str) -> float:
        v = np.asarray(getattr(self, name))
        return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0

    def xy(self, idx=None) -> tuple[float, float]:
        return self.mean("diversity", idx), self.mean("quality", idx)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Evaluator:
    def __init__(self, args):
        self.args = args
        self.service = MusicService(load_model(args.base))
        self.scorers = Scorers.from_folders(args.embedding, args.quality)
        self.prompts = heldout_prompts(args.seed, args.prompts)
        self.fingerprints = {"base": file_hash(Path(args.base)), "E": file_hash(Path(args.embedding)),
                             "Q": file_hash(Path(args.quality))}
        self.settings = dict(prompts=args.prompts, clips=args.clips, seconds=args.seconds, seed=args.seed, omega=OMEGA)
        self.cache_path = Path(args.out) / "cache.jsonl"
        self.cache = {}
        if self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                rec = json.loads(line)
                self.cache[rec["key"]] = rec

    def add(self, name: str, path: str | Path) -> None:
        self.service.add_checkpoint(name, path)
        self.fingerprints[name] = file_hash(Path(path))

    def key(self, p: Point) -> str:
        used = {n: self.fingerprints[n] for n, _ in p.blend}
        blob = json.dumps(dict(point=asdict(p), settings=self.settings, weights=used, E=self.fingerprints["E"],
                               Q=self.fingerprints["Q"]), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()

    def measure(self, p: Point) -> Measured:
        key = self.key(p)
        if key in self.cache:
            rec = self.cache[key]
            return Measured(p, **{k: rec[k] for k in ("quality", "diversity", "vendi", "event_diversity", "drums",
                                                       "degraded", "sample_s_per_clip")})
        q, d, v, ev, drums, degraded, sample_s = [], [], [], [], [], [], 0.0
        blend = Blend(p.blend)
        for i, prompt in enumerate(self.prompts):
            req = Request(prompt, self.args.clips, self.args.seconds, seed=self.args.seed * 100_003 + i,
                          temperature=p.temperature, guidance=p.guidance, negative_prompt=p.negative)
            gen = (self.service.generate_base(req) if p.blend == (("base", 1.0),)
                   else self.service.generate_merged(req, blend))
            sample_s += gen.timings["sampling"]
            s = self.scorers.score(gen.audio, gen.sample_rate, prompt)
            q.append(float(s.quality.mean()))
            d.append(s.mean_diversity)
            v.append(s.vendi)
            codes = gen.codes.numpy()
            ev.append(float(np.mean([event_distance(codes[a], codes[b]) for a in range(len(codes))
                                     for b in range(a + 1, len(codes))])))
            described = [describe(c) for c in codes]
            drums += [x["drums"] for x in described]
            degraded += [x["degraded"] for x in described]
        m = Measured(p, q, d, v, ev, float(np.mean(drums)), float(np.mean(degraded)),
                     sample_s / (len(self.prompts) * self.args.clips))
        rec = dict(key=key, point=asdict(p), **{k: getattr(m, k) for k in ("quality", "diversity", "vendi",
                                                                             "event_diversity", "drums", "degraded",
                                                                             "sample_s_per_clip")})
        self.cache[key] = rec
        with open(self.cache_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return m


def compare_speed(ev: "Evaluator", repeats: int = 3) -> dict:
    """Sampling seconds per clip of θ_q (no CFG) and of the base with CFG γ = 3, measured now, interleaved, on
    the same prompts (cached points may have been measured under other load)."""
    times = {"θ_q": [], "CFG γ=3": []}
    for r in range(repeats):
        for name in times:
            total = 0.0
            for i, prompt in enumerate(ev.prompts[:4]):
                req = Request(prompt, ev.args.clips, ev.args.seconds, seed=r * 1000 + i,
                              guidance=3.0 if name == "CFG γ=3" else 1.0)
                gen = ev.service.generate_base(req) if name == "CFG γ=3" else ev.service.generate_merged(req, Blend.lerp("q", "d", 0.0))
                total += gen.timings["sampling"]
            times[name].append(total / (4 * ev.args.clips))
    return {k: float(np.median(v)) for k, v in times.items()}


def plan(args, have: dict[str, bool], snapshots: dict[str, list[tuple[int, Path]]]) -> list[Point]:
    gammas = (1.0, 3.0) if args.quick else GAMMAS
    temps = (1.0,) if args.quick else tuple(args.temperatures)
    steps = int(round(1 / args.lambda_step))
    lams = (0.0, 0.5, 1.0) if args.quick else tuple(round(x, 3) for x in np.linspace(0, 1, steps + 1))
    pts = [Point(CFG_NEG, g, guidance=g) for g in gammas]
    pts += [Point(CFG_UNCOND, g, guidance=g, negative="") for g in gammas if g > 1]
    pts += [Point(TEMP_BASE, t, temperature=t) for t in temps]
    if have["q"]:
        pts += [Point(TEMP_Q, t, blend=(("q", 1.0),), temperature=t) for t in temps]
    if have["q"] and have["d"]:
        pts += [Point(LERP_QD, lam, blend=tuple((n, w) for n, w in (("q", 1 - lam), ("d", lam)) if w > 0)) for lam in lams]
    if have["q"] and not args.quick:
        pts += [Point(LERP_QB, lam, blend=tuple((n, w) for n, w in (("q", 1 - lam), ("base", lam)) if w > 0))
                for lam in lams[::4]]
    extras = [n for n in ("b5", "b10") if have.get(n)]
    for n in extras:
        pts.append(Point(f"β model {n[1:]}", float(n[1:]), blend=((n, 1.0),)))
    if have["q"] and have["d"] and extras:
        names = ["q", *extras, "d"]
        pts.append(Point("uniform soup", len(names), blend=tuple((n, 1 / len(names)) for n in names)))
    for run, snaps in snapshots.items():
        pts += [Point(f"training {run}", step, blend=((f"{run}@{step}", 1.0),)) for step, _ in snaps]
    return pts


def claims(results: dict[str, list[Measured]], args, speed: dict | None = None) -> list[dict]:
    """The paper's claims, tested on the measured points (see the module docstring of the issue)."""
    out = []
    fam = lambda name: sorted(results.get(name, []), key=lambda m: m.point.x)  # noqa: E731
    n = args.prompts

    def front_diff(a: list[Measured], b: list[Measured]) -> dict:
        d = area_difference([m.xy() for m in a], [m.xy() for m in b])
        ci = bootstrap(lambda idx: area_difference([m.xy(idx) for m in a], [m.xy(idx) for m in b])["difference"], n,
                       reps=args.bootstrap)
        return dict(d, ci=ci)

    cfg = fam(CFG_NEG)
    if len(cfg) >= 2:
        rq = spearman([m.point.x for m in cfg], [m.mean("quality") for m in cfg])
        rd = spearman([m.point.x for m in cfg], [m.mean("diversity") for m in cfg])
        unc = fam(CFG_UNCOND)
        detail = f"Spearman(γ, quality) = {rq:+.2f}, Spearman(γ, diversity) = {rd:+.2f}"
        holds = rq > 0 and rd < 0
        if unc:
            g3 = [m for m in cfg if m.point.x == 3.0]
            u3 = [m for m in unc if m.point.x == 3.0]
            if g3 and u3:
                diff = g3[0].mean("quality") - u3[0].mean("quality")
                se = np.hypot(g3[0].sem("quality"), u3[0].sem("quality"))
                detail += f"; at γ = 3, quality with the negative prompt − unconditional = {diff:+.3f} ± {se:.3f}"
                holds = holds and diff > 0
        out.append(dict(claim="1. CFG raises quality and lowers diversity as γ grows; negative prompting beats "
                              "unconditional", holds=holds, detail=detail))
    lerp = fam(LERP_QD)
    if lerp and cfg:
        q0 = lerp[0]
        g3 = [m for m in cfg if m.point.x == 3.0][0]
        diff = q0.mean("quality") - g3.mean("quality")
        ratio = speed["CFG γ=3"] / speed["θ_q"] if speed else g3.sample_s_per_clip / q0.sample_s_per_clip
        out.append(dict(claim="2. θ_q matches CFG(γ=3) quality without CFG, at about half the inference cost",
                        holds=diff >= -g3.sem("quality"),
                        detail=f"quality θ_q {q0.mean('quality'):.3f} ± {q0.sem('quality'):.3f} vs CFG γ=3 "
                               f"{g3.mean('quality'):.3f} ± {g3.sem('quality'):.3f} (difference {diff:+.3f}); "
                               f"sampling time per clip CFG / θ_q = {ratio:.2f}× (measured together in this run"
                               + (f": {speed['CFG γ=3'] * 1000:.0f} vs {speed['θ_q'] * 1000:.0f} ms)" if speed else ")")))
        base = [m for m in cfg if m.point.x == 1.0][0]
        d1 = lerp[-1]

        def paired(a: Measured, b: Measured, name: str) -> tuple[float, tuple[float, float]]:
            """a − b on the same prompts and seeds, with a prompt-bootstrap 95 % interval."""
            return a.mean(name) - b.mean(name), bootstrap(lambda idx: a.mean(name, idx) - b.mean(name, idx), n,
                                                          reps=args.bootstrap)

        q_vs_base, qd_div, qd_qual = paired(q0, base, "diversity"), paired(d1, q0, "diversity"), paired(d1, q0, "quality")
        ci = lambda d: f"{d[0]:+.3f} (95 % CI {d[1][0]:+.3f} … {d[1][1]:+.3f})"  # noqa: E731
        out.append(dict(claim="3. CFG distillation alone (β = 0) lowers diversity; β > 0 raises it, with a quality cost",
                        holds=q_vs_base[1][1] < 0 and qd_div[1][0] > 0 and qd_qual[0] < 0,
                        detail=f"diversity base {base.mean('diversity'):.3f}, θ_q {q0.mean('diversity'):.3f}, "
                               f"θ_d {d1.mean('diversity'):.3f}; quality θ_q {q0.mean('quality'):.3f}, "
                               f"θ_d {d1.mean('quality'):.3f}. Paired over prompts: diversity θ_q − base {ci(q_vs_base)}, "
                               f"θ_d − θ_q {ci(qd_div)}; quality θ_d − θ_q {ci(qd_qual)}"))
        parts = []
        holds, compared = True, 0
        for other in (CFG_NEG, TEMP_BASE, TEMP_Q):
            if len(fam(other)) >= 2 and len(lerp) >= 2:
                fd = front_diff(lerp, fam(other))
                if fd["x_hi"] <= fd["x_lo"]:
                    parts.append(f"vs {other}: no diversity overlap, not testable")
                    continue
                compared += 1
                holds = holds and fd["ci"][0] > 0
                parts.append(f"vs {other}: area difference {fd['difference']:+.4f} (95 % CI {fd['ci'][0]:+.4f} … "
                             f"{fd['ci'][1]:+.4f}) over diversity {fd['x_lo']:.3f}–{fd['x_hi']:.3f}")
        out.append(dict(claim="4. The LERP front Pareto-dominates the CFG γ-front and temperature sampling over their overlap",
                        holds=holds and compared > 0, detail="; ".join(parts)))
        if len(lerp) >= 3:
            q_0, q_1 = lerp[0].mean("quality"), lerp[-1].mean("quality")
            d_0, d_1 = lerp[0].mean("diversity"), lerp[-1].mean("diversity")
            inner = lerp[1:-1]
            q_excess = [((m.mean("quality") - q_1) / (q_0 - q_1) - (1 - m.point.x)) if q_0 != q_1 else np.nan for m in inner]
            d_excess = [((m.mean("diversity") - d_0) / (d_1 - d_0) - m.point.x) if d_1 != d_0 else np.nan for m in inner]
            half = [m for m in lerp if m.point.x == 0.5]
            verdicts = []
            if d_1 - d_0 <= lerp[-1].sem("diversity"):
                detail = (f"diagonal not testable: θ_d is not more diverse than θ_q (diversity {d_0:.3f} → {d_1:.3f}), "
                          f"so there is no trade-off to lie above the diagonal of")
            elif q_0 - q_1 <= lerp[0].sem("quality"):
                detail = (f"diagonal not testable: θ_d costs no quality (θ_q {q_0:.3f}, θ_d {q_1:.3f}), so there is no "
                          f"trade-off along λ (normalised diversity above the diagonal by {np.nanmean(d_excess):+.3f})")
            else:
                detail = (f"normalised quality above the diagonal by {np.nanmean(q_excess):+.3f} on average "
                          f"(normalised diversity: {np.nanmean(d_excess):+.3f})")
                verdicts.append(bool(np.nanmean(q_excess) > 0))
            if not any(fam(n) for n in ("β model 5", "β model 10")):
                detail += "; no intermediate-β models to compare λ = 0.5 with"
            for name in ("β model 5", "β model 10"):
                if fam(name) and half:
                    b, h = fam(name)[0], half[0]
                    dq, dd = paired(h, b, "quality"), paired(h, b, "diversity")
                    # "at least as good": λ = 0.5 is not significantly worse than the β model on either axis
                    verdicts.append(dq[1][1] >= 0 and dd[1][1] >= 0)
                    detail += (f"; λ = 0.5 − {name}: quality {ci(dq)}, diversity {ci(dd)} (paired over prompts)")
            holds = all(verdicts) if verdicts else None
            out.append(dict(claim="5. λ = 0.5 is at least as good as intermediate β; quality along λ lies above the diagonal",
                            holds=holds, detail=detail))
        hack = (f"θ_q → θ_d: E diversity {q0.mean('diversity'):.3f} → {d1.mean('diversity'):.3f}, musical (event) "
                f"diversity {q0.mean('event_diversity'):.3f} → {d1.mean('event_diversity'):.3f}, clips with drums "
                f"{q0.drums:.2f} → {d1.drums:.2f}, with noise/distortion tokens {q0.degraded:.2f} → {d1.degraded:.2f}")
        gamed = d1.degraded > q0.degraded + 0.05 or d1.drums > q0.drums + 0.15 or (
            d1.mean("event_diversity") <= q0.mean("event_diversity") and d1.mean("diversity") > q0.mean("diversity"))
        out.append(dict(claim="Reward hacking check: does θ_d game E (drums, noise) rather than become musically diverse?",
                        holds=not gamed, detail=hack + (" — signs of gaming" if gamed else " — no sign of gaming")))
    return out


def write_outputs(results: dict[str, list[Measured]], table: list[dict], out: Path, args, elapsed: float) -> None:
    rows = []
    for family, ms in results.items():
        for m in sorted(ms, key=lambda m: m.point.x):
            rows.append(dict(family=family, x=m.point.x, blend=" + ".join(f"{w:g}·{n}" for n, w in m.point.blend),
                             guidance=m.point.guidance, negative=m.point.negative, temperature=m.point.temperature,
                             quality=m.mean("quality"), quality_sem=m.sem("quality"), diversity=m.mean("diversity"),
                             diversity_sem=m.sem("diversity"), vendi=m.mean("vendi"), vendi_sem=m.sem("vendi"),
                             event_diversity=m.mean("event_diversity"), drums=m.drums, degraded=m.degraded,
                             sample_s_per_clip=m.sample_s_per_clip))
    import io

    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    save_bytes(text.getvalue().encode(), out / "points.csv")
    main_fams = [f for f in (CFG_NEG, CFG_UNCOND, TEMP_BASE, TEMP_Q, LERP_QD, LERP_QB) if f in results]
    fronts = {f: [m.xy() for m in sorted(results[f], key=lambda m: m.point.x)] for f in main_fams}
    save_json(dict(fronts=fronts, settings=dict(prompts=args.prompts, clips=args.clips, seconds=args.seconds)),
              out / "fronts.json")
    others = {f"{f}": ms[0].xy() for f, ms in results.items() if f not in main_fams and len(ms) == 1}
    quality_diversity_plot(fronts, others, size=(900, 560), title="nano: quality vs diversity").save(out / "fronts.png")
    if LERP_QD in results and len(results[LERP_QD]) >= 3:
        lambda_plot(sorted(results[LERP_QD], key=lambda m: m.point.x)).save(out / "lambda.png")
    training = {f: [m.xy() for m in sorted(ms, key=lambda m: m.point.x)] for f, ms in results.items()
                if f.startswith("training ")}
    if training:
        quality_diversity_plot(training, {}, size=(900, 560), title="along training (snapshots)").save(out / "training.png")
    lines = ["# Quality–diversity evaluation of MusicGen-nano", "",
             f"Command: `python -m training.evaluate {' '.join(args.argv)}`  ", f"Wall time of this run: {elapsed / 60:.1f} "
             f"min on {torch.get_num_threads()} CPU thread(s), {args.cached} of {sum(map(len, results.values()))} points "
             f"from the cache (each point takes about 5 s on a quiet machine). {args.prompts} held-out prompts × {args.clips} clips × "
             f"{args.seconds:g} s per point; quality = {OMEGA:g}·adherence + audio quality; diversity = mean pairwise "
             f"r_D with E. ± are standard errors over prompts; intervals are 95 % prompt bootstraps.", "",
             "## Claims", "", "| claim | holds? | measured |", "|---|---|---|"]
    verdict = {True: "yes", False: "**no**", None: "not testable"}
    lines += [f"| {c['claim']} | {verdict[c['holds']]} | {c['detail']} |" for c in table]
    lines += ["", "![fronts](fronts.png)", ""]
    if (out / "lambda.png").exists():
        lines += ["![lambda](lambda.png)", ""]
    if training:
        lines += ["![training](training.png)", ""]
    lines += ["## Points", "", "| family | x | quality | diversity | Vendi | event diversity | drums | noise | s/clip |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['x']:g} | {r['quality']:.3f} ± {r['quality_sem']:.3f} | {r['diversity']:.3f} ± "
              f"{r['diversity_sem']:.3f} | {r['vendi']:.2f} | {r['event_diversity']:.3f} | {r['drums']:.2f} | "
              f"{r['degraded']:.2f} | {r['sample_s_per_clip']:.3f} |" for r in rows]
    save_bytes(("\n".join(lines) + "\n").encode(), out / "report.md")


def lambda_plot(lerp: list[Measured]):
    """Figure 4: quality and diversity along λ, each normalised between the endpoints, against the diagonal."""
    from PIL import Image, ImageDraw

    from engine.figures import _text

    W, H, left, top, right, bottom = 640, 420, 60, 30, 170, 44
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    sx = lambda v: left + v * (W - left - right)  # noqa: E731
    sy = lambda v: H - bottom - (v + 0.2) / 1.4 * (H - top - bottom)  # noqa: E731
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    d.line([(sx(0), sy(1)), (sx(1), sy(0))], fill=(150, 150, 150), width=1)
    d.line([(sx(0), sy(0)), (sx(1), sy(1))], fill=(150, 150, 150), width=1)
    q = np.array([m.mean("quality") for m in lerp])
    dv = np.array([m.mean("diversity") for m in lerp])
    lam = np.array([m.point.x for m in lerp])
    qn = (q - q[-1]) / (q[0] - q[-1]) if q[0] != q[-1] else q * 0
    dn = (dv - dv[0]) / (dv[-1] - dv[0]) if dv[-1] != dv[0] else dv * 0
    for k, (name, ys) in enumerate((("quality (normalised)", qn), ("diversity (normalised)", dn))):
        color = PALETTE[k]
        d.line([(sx(x), sy(y)) for x, y in zip(lam, ys, strict=True)], fill=color, width=2)
        _text(d, (W - right + 10, top + 14 * k), name, fill=color)
    _text(d, (W - right + 10, top + 28), "diagonals: linear", fill=(120, 120, 120))
    for i in range(5):
        _text(d, (sx(i / 4) - 8, H - bottom + 6), f"{i / 4:g}", fill="black")
    _text(d, (left + 150, H - 18), "λ (0 = θ_q, 1 = θ_d)", fill="black")
    _text(d, (left, 8), "Figure 4: quality and diversity along λ", fill="black")
    return img


def main(argv=None) -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="weights/nano")
    p.add_argument("--theta-q", default="weights/theta_q")
    p.add_argument("--theta-d", default="weights/theta_d")
    p.add_argument("--extra", nargs="*", default=[], help="more β models as NAME=PATH (b5=..., b10=...)")
    p.add_argument("--runs", nargs="*", default=[], help="training runs whose snapshots to evaluate (runs/theta_d ...)")
    p.add_argument("--embedding", default="weights/embedding")
    p.add_argument("--quality", default="weights/quality")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=500)
    p.add_argument("--lambda-step", type=float, default=0.05, help="λ grid of the LERP fronts")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    p.add_argument("--quick", action="store_true", help="few prompts, few points: a smoke test in minutes")
    p.add_argument("--out", default="weights/eval")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.prompts, args.clips, args.bootstrap = min(args.prompts, 4), min(args.clips, 3), 50
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ev = Evaluator(args)
    have = {"q": False, "d": False}
    for name, path in (("q", args.theta_q), ("d", args.theta_d), *(e.split("=", 1) for e in args.extra)):
        if path and Path(path).exists():
            ev.add(name, path)
            have[name] = True
        elif name in ("q", "d"):
            print(f"note: {path} not found; points that need θ_{name} are skipped")
    snapshots = {}
    for run in args.runs:
        snaps = sorted((int(f.stem.split("_")[1]), f) for f in (Path(run) / "snapshots").glob("step_*.safetensors"))
        name = Path(run).name
        snapshots[name] = snaps
        for step, f in snaps:
            ev.add(f"{name}@{step}", f)
    points = plan(args, have, snapshots)
    results: dict[str, list[Measured]] = {}
    args.cached = sum(ev.key(pt) in ev.cache for pt in points)
    for i, pt in enumerate(points):
        t = time.time()
        m = ev.measure(pt)
        results.setdefault(pt.family, []).append(m)
        print(f"[{i + 1}/{len(points)}] {pt.label:40s} quality {m.mean('quality'):.3f} ± {m.sem('quality'):.3f}  "
              f"diversity {m.mean('diversity'):.3f} ± {m.sem('diversity'):.3f}  ({time.time() - t:.1f} s)", flush=True)
    speed = compare_speed(ev, repeats=1 if args.quick else 3) if have["q"] else None
    table = claims(results, args, speed)
    write_outputs(results, table, out, args, time.time() - t0)
    for c in table:
        print(f"{ {True: 'HOLDS', False: 'FAILS', None: 'N/A  '}[c['holds']]}  {c['claim']}\n       {c['detail']}")
    print(f"wrote {out}/report.md in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
