"""Reproduce the paper's quality–diversity results on nano (Figures 1–4 and 6, Sections 3.2–3.4).

Every point is a way of sampling (a blend of checkpoints, CFG γ and negative prompt, temperature), measured by the
one held-out evaluation (`training.heldout`, which the trainer's eval.csv uses too) on `--prompts` held-out prompts
with `--clips` clips each (seeded per prompt, the same for every point): quality = ω·adherence + audio quality (mean
over clips, then prompts), diversity = mean pairwise r_D with E within a prompt's clips (and the Vendi score), each
with its standard error over prompts. The claims are tested by `training.claims`. Points:
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

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import save_bytes, save_csv, save_json
from engine.figures import lambda_plot, quality_diversity_plot
from engine.merge import Blend
from engine.model import load_model
from engine.scorers import OMEGA, Scorers
from engine.service import MusicService, Request
from training.claims import (
    CFG_NEG,
    CFG_UNCOND,
    LERP_QB,
    LERP_QD,
    PAPER_GAMMA,
    TEMP_BASE,
    TEMP_Q,
    Measured,
    Point,
    claims,
)
from training.corpus import heldout_prompts
from training.heldout import HeldoutResult, HeldoutSettings, is_exact, measure
from training.settings import parse, setting

GAMMAS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
TEMPERATURES = [0.7, 0.85, 1.0, 1.15, 1.3]
CACHED = ("quality", "diversity", "vendi", "event_diversity", "drums", "degraded", "sample_s_per_clip", "adherence",
          "audio_quality")
__all__ = ["CFG_NEG", "CFG_UNCOND", "LERP_QB", "LERP_QD", "TEMP_BASE", "TEMP_Q", "Measured", "Point", "claims"]


@dataclass(frozen=True)
class EvalSettings:
    base: str = setting("weights/nano", "base model")
    theta_q: str = setting("weights/theta_q", "θ_q decoder")
    theta_d: str = setting("weights/theta_d", "θ_d decoder")
    extra: list[str] = setting([], "more β models as NAME=PATH (b5=..., b10=...)")
    runs: list[str] = setting([], "training runs whose snapshots to evaluate (runs/theta_d ...)")
    embedding: str = setting("weights/embedding", "E")
    quality: str = setting("weights/quality", "quality scorer")
    prompts: int = setting(32, "held-out prompts")
    clips: int = setting(4, "clips per prompt")
    seconds: float = setting(4.0, "clip length (s)")
    seed: int = setting(0, "seed of the prompts and of every point's clips")
    bootstrap: int = setting(500, "bootstrap repetitions of the intervals")
    lambda_step: float = setting(0.05, "λ grid of the LERP fronts")
    temperatures: list[float] = setting(TEMPERATURES, "temperatures of the temperature-sampling baselines")
    quick: bool = setting(False, "few prompts, few points: a smoke test in minutes")
    out: str = setting("weights/eval", "output folder (and its cache)")

    def __post_init__(self):
        if not 0 < self.lambda_step <= 1:
            raise ValueError(f"lambda_step must be in (0, 1], got {self.lambda_step}")
        if self.prompts < 2 or self.clips < 2 or self.bootstrap < 1:
            raise ValueError("prompts and clips must be ≥ 2 (standard errors, pairwise diversity), bootstrap ≥ 1")

    def effective(self) -> EvalSettings:
        """These settings, or with --quick at most 4 prompts, 3 clips and 50 bootstrap repetitions."""
        if not self.quick:
            return self
        return dataclasses.replace(self, prompts=min(self.prompts, 4), clips=min(self.clips, 3), bootstrap=50)

    def heldout(self) -> HeldoutSettings:
        return HeldoutSettings(self.prompts, self.clips, self.seconds, self.seed)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Evaluator:
    """Measures points with `training.heldout.measure` through one `MusicService`, cached per point."""

    def __init__(self, s: EvalSettings):
        self.settings = s
        self.service = MusicService(load_model(s.base))
        self.scorers = Scorers.from_folders(s.embedding, s.quality)
        self.prompts = heldout_prompts(s.seed, s.prompts)
        self.fingerprints = {"base": file_hash(Path(s.base)), "E": file_hash(Path(s.embedding)),
                             "Q": file_hash(Path(s.quality))}
        self.cache_key_settings = dict(prompts=s.prompts, clips=s.clips, seconds=s.seconds, seed=s.seed, omega=OMEGA)
        self.cache_path = Path(s.out) / "cache.jsonl"
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
        blob = json.dumps(dict(point=asdict(p), settings=self.cache_key_settings, weights=used,
                               E=self.fingerprints["E"],
                               Q=self.fingerprints["Q"]), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()

    def sampler(self, p: Point):
        if p.blend == (("base", 1.0),):
            return self.service.generate_base
        blend = Blend(p.blend)
        return lambda req: self.service.generate_merged(req, blend)

    def measure(self, p: Point) -> Measured:
        key = self.key(p)
        if key in self.cache:
            rec = self.cache[key]
            return Measured(p, HeldoutResult(**{k: rec[k] for k in CACHED if k in rec}))
        result = measure(self.sampler(p), self.prompts, self.settings.heldout(), self.scorers,
                         exact=is_exact(self.service.model.codec),
                         temperature=p.temperature, guidance=p.guidance, negative=p.negative)
        rec = dict(key=key, point=asdict(p), **{k: getattr(result, k) for k in CACHED})
        self.cache[key] = rec
        with open(self.cache_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return Measured(p, result)

    def sampling_time(self, name: str, repeat: int) -> float:
        """Sampling seconds per clip of θ_q (no CFG) or of the base with CFG γ = 3 on four prompts."""
        s, total = self.settings, 0.0
        for i, prompt in enumerate(self.prompts[:4]):
            req = Request(prompt, s.clips, s.seconds, seed=repeat * 1000 + i,
                          guidance=PAPER_GAMMA if name == "CFG γ=3" else 1.0)
            gen = (self.service.generate_base(req) if name == "CFG γ=3"
                   else self.service.generate_merged(req, Blend.lerp("q", "d", 0.0)))
            total += gen.timings["sampling"]
        return total / (4 * s.clips)


def compare_speed(ev: Evaluator, repeats: int = 3) -> dict:
    """Sampling seconds per clip of θ_q (no CFG) and of the base with CFG γ = 3, measured now, interleaved, on
    the same prompts (cached points may have been measured under other load)."""
    times = {"θ_q": [], "CFG γ=3": []}
    for r in range(repeats):
        for name in times:
            times[name].append(ev.sampling_time(name, r))
    return {k: float(np.median(v)) for k, v in times.items()}


def plan(s: EvalSettings, have: dict[str, bool], snapshots: dict[str, list[tuple[int, Path]]]) -> list[Point]:
    gammas = (1.0, 3.0) if s.quick else GAMMAS
    temps = (1.0,) if s.quick else tuple(s.temperatures)
    steps = int(round(1 / s.lambda_step))
    lams = (0.0, 0.5, 1.0) if s.quick else tuple(round(x, 3) for x in np.linspace(0, 1, steps + 1))
    lerp = lambda a, b, lam: tuple((n, w) for n, w in ((a, 1 - lam), (b, lam)) if w > 0)
    pts = [Point(CFG_NEG, g, guidance=g) for g in gammas]
    pts += [Point(CFG_UNCOND, g, guidance=g, negative="") for g in gammas if g > 1]
    pts += [Point(TEMP_BASE, t, temperature=t) for t in temps]
    if have["q"]:
        pts += [Point(TEMP_Q, t, blend=(("q", 1.0),), temperature=t) for t in temps]
    if have["q"] and have["d"]:
        pts += [Point(LERP_QD, lam, blend=lerp("q", "d", lam)) for lam in lams]
    if have["q"] and not s.quick:
        pts += [Point(LERP_QB, lam, blend=lerp("q", "base", lam)) for lam in lams[::4]]
    extras = [n for n in ("b5", "b10") if have.get(n)]
    pts += [Point(f"β model {n[1:]}", float(n[1:]), blend=((n, 1.0),)) for n in extras]
    if have["q"] and have["d"] and extras:
        names = ["q", *extras, "d"]
        pts.append(Point("uniform soup", len(names), blend=tuple((n, 1 / len(names)) for n in names)))
    for run, snaps in snapshots.items():
        pts += [Point(f"training {run}", step, blend=((f"{run}@{step}", 1.0),)) for step, _ in snaps]
    return pts


# ---------------------------------------------------------------- outputs
def point_rows(results: dict[str, list[Measured]]) -> list[dict]:
    rows = []
    for family, ms in results.items():
        for m in sorted(ms, key=lambda m: m.point.x):
            p, r = m.point, m.result
            rows.append(dict(family=family, x=p.x, blend=" + ".join(f"{w:g}·{n}" for n, w in p.blend),
                             guidance=p.guidance, negative=p.negative, temperature=p.temperature,
                             quality=m.mean("quality"), quality_sem=m.sem("quality"), diversity=m.mean("diversity"),
                             diversity_sem=m.sem("diversity"), vendi=m.mean("vendi"), vendi_sem=m.sem("vendi"),
                             event_diversity=m.mean("event_diversity"), drums=r.drums, degraded=r.degraded,
                             sample_s_per_clip=r.sample_s_per_clip))
    return rows


def write_figures(results: dict[str, list[Measured]], s: EvalSettings, out: Path) -> dict[str, bool]:
    """fronts.json (for the app), fronts.png, lambda.png and training.png; returns which optional figures exist."""
    xy = lambda ms: [m.xy() for m in sorted(ms, key=lambda m: m.point.x)]
    main_fams = [f for f in (CFG_NEG, CFG_UNCOND, TEMP_BASE, TEMP_Q, LERP_QD, LERP_QB) if f in results]
    fronts = {f: xy(results[f]) for f in main_fams}
    save_json(dict(fronts=fronts, settings=dict(prompts=s.prompts, clips=s.clips, seconds=s.seconds)),
              out / "fronts.json")
    others = {f: ms[0].xy() for f, ms in results.items() if f not in main_fams and len(ms) == 1}
    quality_diversity_plot(fronts, others, size=(900, 560), title="nano: quality vs diversity").save(out / "fronts.png")
    lerp = sorted(results.get(LERP_QD, []), key=lambda m: m.point.x)
    if len(lerp) >= 3:
        lambda_plot([m.point.x for m in lerp], [m.mean("quality") for m in lerp],
                    [m.mean("diversity") for m in lerp]).save(out / "lambda.png")
    training = {f: xy(ms) for f, ms in results.items() if f.startswith("training ")}
    if training:
        quality_diversity_plot(training, {}, size=(900, 560), title="along training (snapshots)").save(
            out / "training.png")
    return dict(lambda_plot=len(lerp) >= 3, training=bool(training))


def report(table: list[dict], rows: list[dict], s: EvalSettings, figures: dict[str, bool], command: list[str],
           cached: int, elapsed: float) -> str:
    lines = ["# Quality–diversity evaluation of MusicGen-nano", "",
             f"Command: `python -m training.evaluate {' '.join(command)}`  ",
             f"Wall time of this run: {elapsed / 60:.1f} min on {torch.get_num_threads()} CPU thread(s), {cached} of "
             f"{len(rows)} points from the cache (each point takes about 5 s on a quiet machine). {s.prompts} held-out "
             f"prompts × {s.clips} clips × {s.seconds:g} s per point; quality = {OMEGA:g}·adherence + audio quality; "
             f"diversity = mean pairwise r_D with E. ± are standard errors over prompts; intervals are 95 % prompt "
             f"bootstraps.", "", "## Claims", "", "| claim | holds? | measured |", "|---|---|---|"]
    verdict = {True: "yes", False: "**no**", None: "not testable"}
    lines += [f"| {c['claim']} | {verdict[c['holds']]} | {c['detail']} |" for c in table]
    lines += ["", "![fronts](fronts.png)", ""]
    lines += ["![lambda](lambda.png)", ""] if figures["lambda_plot"] else []
    lines += ["![training](training.png)", ""] if figures["training"] else []
    lines += ["## Points", "",
              "| family | x | quality | diversity | Vendi | event diversity | drums | noise | s/clip |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['x']:g} | {r['quality']:.3f} ± {r['quality_sem']:.3f} | {r['diversity']:.3f} ± "
              f"{r['diversity_sem']:.3f} | {r['vendi']:.2f} | {r['event_diversity']:.3f} | {r['drums']:.2f} | "
              f"{r['degraded']:.2f} | {r['sample_s_per_clip']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command
def load_points(ev: Evaluator, s: EvalSettings) -> tuple[dict[str, bool], dict[str, list[tuple[int, Path]]]]:
    """Register θ_q, θ_d, the extra β models and the runs' snapshots; returns which exist and the snapshots."""
    have = {"q": False, "d": False}
    for name, path in (("q", s.theta_q), ("d", s.theta_d), *(e.split("=", 1) for e in s.extra)):
        if path and Path(path).exists():
            ev.add(name, path)
            have[name] = True
        elif name in ("q", "d"):
            print(f"note: {path} not found; points that need θ_{name} are skipped")
    snapshots = {}
    for run in s.runs:
        snaps = sorted((int(f.stem.split("_")[1]), f) for f in (Path(run) / "snapshots").glob("step_*.safetensors"))
        snapshots[Path(run).name] = snaps
        for step, f in snaps:
            ev.add(f"{Path(run).name}@{step}", f)
    return have, snapshots


def main(argv=None) -> None:
    (requested,) = parse([EvalSettings], argv, description=__doc__)
    command = list(argv if argv is not None else sys.argv[1:])
    s = requested.effective()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ev = Evaluator(s)
    have, snapshots = load_points(ev, s)
    points = plan(s, have, snapshots)
    cached = sum(ev.key(pt) in ev.cache for pt in points)
    results: dict[str, list[Measured]] = {}
    for i, pt in enumerate(points):
        t = time.time()
        m = ev.measure(pt)
        results.setdefault(pt.family, []).append(m)
        print(f"[{i + 1}/{len(points)}] {pt.label:40s} quality {m.mean('quality'):.3f} ± {m.sem('quality'):.3f}  "
              f"diversity {m.mean('diversity'):.3f} ± {m.sem('diversity'):.3f}  ({time.time() - t:.1f} s)", flush=True)
    speed = compare_speed(ev, repeats=1 if s.quick else 3) if have["q"] else None
    table = claims(results, s, speed)
    rows = point_rows(results)
    save_csv(rows, list(rows[0]), out / "points.csv")
    figures = write_figures(results, s, out)
    save_bytes(report(table, rows, s, figures, command, cached, time.time() - t0).encode(), out / "report.md")
    for c in table:
        print(f"{ {True: 'HOLDS', False: 'FAILS', None: 'N/A  '}[c['holds']]}  {c['claim']}\n       {c['detail']}")
    print(f"wrote {out}/report.md in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
