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

from engine import shipped
from engine.cfg import CfgSetting
from engine.checkpoint import data_digest, save_bytes, save_csv, save_json
from engine.figures import lambda_plot, quality_diversity_plot
from engine.merge import Blend
from engine.model import load_model
from engine.modes import MERGE_MODES
from engine.score_codec import RENDERERS, ScoreCodec
from engine.scorers import OMEGA, Scorers
from engine.service import MusicService, Request
from training.claims import (
    AXES,
    BETA_MODEL,
    CFG_NEG,
    CFG_UNCOND,
    HALF_COST_RATIO,
    LERP_QB,
    LERP_QD,
    MARGIN,
    TEMP_BASE,
    TEMP_Q,
    Measured,
    Point,
    claims,
    teacher_fronts,
)
from training.corpus import heldout_prompts, validation_prompts
from training.frontier import bootstrap, spearman
from training.heldout import HeldoutResult, HeldoutSettings, is_readable, measure
from training.settings import parse, setting

GAMMAS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
TEMPERATURES = [0.7, 0.85, 1.0, 1.15, 1.3]
CACHED = ("quality", "diversity", "vendi", "event_diversity", "drums", "degraded", "sample_s_per_clip", "adherence",
          "audio_quality", "exact_quality", "exact_adherence", "clean", "requests", "lead_plays", "parts",
          "by_kind")
METRICS_VERSION = "exact-3"  # part of every cache key: bump when what a point measures changes
__all__ = ["CFG_NEG", "CFG_UNCOND", "LERP_QB", "LERP_QD", "TEMP_BASE", "TEMP_Q", "Measured", "Point", "claims"]


@dataclass(frozen=True)
class EvalSettings:
    base: str = setting(shipped.NANO, "base model")
    theta_q: str = setting(shipped.THETA_Q, "θ_q decoder")
    theta_d: str = setting(shipped.THETA_D, "θ_d decoder")
    extra: list[str] = setting([], "more models as NAME=PATH: a β model when its config.json (the trainer's) has "
                                   "β > 0 and θ_d's reward (claim 5 and the soup); any other one is evaluated on its "
                                   "own (e.g. E50=... for a θ_d trained with another reward)")
    runs: list[str] = setting([], "training runs whose snapshots to evaluate (runs/theta_d ...)")
    embedding: str = setting(shipped.EMBEDDING, "E")
    quality: str = setting(shipped.QUALITY, "quality scorer")
    renderer: str = setting("synth", "how nano's takes sound for the learned scores: synth (mono 16 kHz) or soundfont "
                                     "(GM instruments, stereo 32 kHz; the exact metrics read the tokens either way)",
                            choices=RENDERERS)
    soundfont: str | None = setting(None, "the .sf2/.sf3 bank for --renderer soundfont (default: the best installed)")
    prompts: int = setting(32, "held-out prompts")
    clips: int = setting(4, "clips per prompt")
    seconds: float = setting(4.0, "clip length (s)")
    seed: int = setting(0, "seed of the prompts and of every point's clips")
    bootstrap: int = setting(500, "bootstrap repetitions of the intervals")
    lambda_step: float = setting(0.05, "λ grid of the LERP fronts")
    gammas: list[float] = setting(list(GAMMAS), "CFG γ values of the γ-fronts")
    temperatures: list[float] = setting(TEMPERATURES, "temperatures of the temperature-sampling baselines")
    teacher: str = setting(shipped.TEACHER,
                           "the chosen CFG teacher (training.teacher_sweep); missing: the paper's γ = 3")
    split: str = setting("test", "prompts: the held-out test prompts (reported) or validation prompts disjoint from "
                                 "them (for choices, e.g. which β model is θ_d)", choices=("test", "validation"))
    quick: bool = setting(False, "few prompts, few points: a smoke test in minutes")
    out: str = setting(shipped.EVAL, "output folder (and its cache)")
    notes: str = setting("", "a Markdown file appended to the report (e.g. which prompts each choice used and the "
                             "diagnoses of failed claims, written by whoever ran it)")

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

    def load_teacher(self) -> CfgSetting:
        return CfgSetting.load(self.teacher)


def file_hash(path: Path) -> str:
    """Fingerprint of the tensor data of a checkpoint file or folder (headers and their metadata left out)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]:
        h.update(data_digest(f).encode())
    return h.hexdigest()[:16]


class Evaluator:
    """Measures points with `training.heldout.measure` through one `MusicService`, cached per point. `split`:
    "test" (the held-out test prompts) or "validation" (held-out prompts disjoint from them, for choices)."""

    def __init__(self, s: EvalSettings, split: str = "test"):
        self.settings = s
        self.service = MusicService(load_model(s.base))
        if isinstance(self.service.model.codec, ScoreCodec) and s.renderer != "synth":
            self.service.model.codec = ScoreCodec(renderer=s.renderer, soundfont=s.soundfont)
        self.scorers = Scorers.from_folders(s.embedding, s.quality)
        self.prompts = {"test": heldout_prompts, "validation": validation_prompts}[split](s.seed, s.prompts)
        self.fingerprints = {"base": file_hash(Path(s.base)), "E": file_hash(Path(s.embedding)),
                             "Q": file_hash(Path(s.quality))}
        self.cache_key_settings = dict(prompts=s.prompts, clips=s.clips, seconds=s.seconds, seed=s.seed, omega=OMEGA,
                                       split=split, metrics=METRICS_VERSION, sound=self.sound())
        self.cache_path = Path(s.out) / "cache.jsonl"
        self.cache = {}
        if self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                rec = json.loads(line)
                self.cache[rec["key"]] = rec

    def sound(self) -> str:
        """How the takes the learned scores hear were made (part of every cached point's key)."""
        return getattr(self.service.model.codec, "description", "MusicGen's EnCodec") + ", at -14 LUFS"

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
                         readable=is_readable(self.service.model.codec),
                         temperature=p.temperature, guidance=p.guidance, negative=p.negative,
                         plausibility=p.plausibility, top_p=p.top_p)
        rec = dict(key=key, point=asdict(p), **{k: getattr(result, k) for k in CACHED})
        self.cache[key] = rec
        with open(self.cache_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return Measured(p, result)

    def sampling_time(self, name: str, repeat: int, teacher: CfgSetting) -> float:
        """Sampling seconds per clip of θ_q (no CFG) or of the base with the teacher's CFG on four prompts."""
        s, total = self.settings, 0.0
        cfg = teacher if name == "teacher" else CfgSetting(1.0, teacher.negative)
        for i, prompt in enumerate(self.prompts[:4]):
            req = Request(prompt, s.clips, s.seconds, seed=repeat * 1000 + i, **cfg.request_fields())
            gen = (self.service.generate_base(req) if name == "teacher"
                   else self.service.generate_merged(req, Blend.lerp("q", "d", 0.0)))
            total += gen.timings["sampling"]
        return total / (4 * s.clips)


def compare_speed(ev: Evaluator, teacher: CfgSetting, repeats: int = 3) -> dict:
    """Sampling seconds per clip of θ_q (no CFG) and of the base with the teacher's CFG, measured now, interleaved,
    on the same prompts (cached points may have been measured under other load)."""
    times = {"θ_q": [], "teacher": []}
    for r in range(repeats):
        for name in times:
            times[name].append(ev.sampling_time(name, r, teacher))
    return {k: float(np.median(v)) for k, v in times.items()}


def plan(s: EvalSettings, have: dict[str, bool], snapshots: dict[str, list[tuple[int, Path]]],
         teacher: CfgSetting, betas: dict[str, float] | None = None) -> list[Point]:
    """The points to measure. `betas`: the β of each loaded β model (`beta_models`), by name."""
    betas = betas or {}
    gammas = tuple(dict.fromkeys((1.0, 3.0, teacher.guidance))) if s.quick else tuple(s.gammas)
    temps = (1.0,) if s.quick else tuple(s.temperatures)
    pts = [Point(CFG_NEG, g, guidance=g) for g in gammas]
    pts += [Point(CFG_UNCOND, g, guidance=g, negative="") for g in gammas if g > 1]
    if teacher.cuts:  # the teacher's mask or top-p: CFG with the negative prompt and unconditional, along γ
        a, top = teacher.plausibility, teacher.top_p
        neg, uncond = teacher_fronts(teacher)
        pts += [Point(neg, g, guidance=g, plausibility=a, top_p=top) for g in gammas]
        pts += [Point(uncond, g, guidance=g, negative="", plausibility=a, top_p=top) for g in gammas if g > 1]
    pts += [Point(TEMP_BASE, t, temperature=t) for t in temps]
    if have["q"]:
        pts += [Point(TEMP_Q, t, blend=(("q", 1.0),), temperature=t) for t in temps]
    extras = sorted((n for n in betas if have.get(n)), key=lambda n: betas[n])
    models = [n for n in ("q", *extras, "d") if have.get(n)]
    pts += mode_points(s, models, with_lambda=True)
    pts += [Point(f"{BETA_MODEL}{betas[n]:g}", betas[n], blend=((n, 1.0),)) for n in extras]
    pts += mode_points(s, models, with_lambda=False)
    others = sorted(n for n in have if n not in ("q", "d", *extras) and have[n])
    pts += [Point(f"{OTHER_MODEL}{n}", 1.0, blend=((n, 1.0),)) for n in others]  # e.g. another reward's θ_d
    for run, snaps in snapshots.items():
        pts += [Point(f"training {run}", step, blend=((f"{run}@{step}", 1.0),)) for step, _ in snaps]
    return pts


def mode_points(s: EvalSettings, models: list[str], with_lambda: bool) -> list[Point]:
    """The fronts of the merge modes with λ (`engine.modes`): every n-th λ of the grid their `eval_every` asks for
    (--quick: λ = 0, 0.5, 1, and no coarse references); or one point per mode without λ (the soup of `models`, x =
    their count)."""
    steps = int(round(1 / s.lambda_step))
    lams = (0.0, 0.5, 1.0) if s.quick else tuple(round(x, 3) for x in np.linspace(0, 1, steps + 1))
    pts = []
    for mode in MERGE_MODES.values():
        if (not mode.family or mode.uses_lambda != with_lambda or not mode.available(models)
                or (s.quick and mode.eval_every > 1)):
            continue
        if not mode.uses_lambda:
            pts.append(Point(mode.family, len(models), blend=mode.blend(None, models).parts))
            continue
        pts += [Point(mode.family, lam, blend=mode.blend(lam, models).parts) for lam in lams[::mode.eval_every]]
    return pts


OTHER_MODEL = "model "  # the family of an --extra model that is not a β model of θ_d's reward


# ---------------------------------------------------------------- outputs
POINT_COLUMNS = ("exact_quality", "exact_adherence", "clean", "event_diversity", "quality", "diversity", "vendi")


def point_rows(results: dict[str, list[Measured]]) -> list[dict]:
    rows = []
    for family, ms in results.items():
        for m in sorted(ms, key=lambda m: m.point.x):
            p, r = m.point, m.result
            row = dict(family=family, x=p.x, blend=" + ".join(f"{w:g}·{n}" for n, w in p.blend), guidance=p.guidance,
                       negative=p.negative, plausibility=p.plausibility, top_p=p.top_p, temperature=p.temperature)
            for name in POINT_COLUMNS:
                row[name], row[name + "_sem"] = m.mean(name), m.sem(name)
            rows.append(dict(row, drums=r.drums, degraded=r.degraded, lead_plays=r.lead_plays, parts=r.parts,
                             sample_s_per_clip=r.sample_s_per_clip))
    return rows


def agreement(results: dict[str, list[Measured]], n_prompts: int, reps: int) -> dict[str, dict]:
    """Spearman rank correlation, across all evaluated points, between each learned score and its exact
    counterpart, with a 95 % prompt-bootstrap interval (every point re-averaged on the same resampled prompts)."""
    ms = [m for family in results.values() for m in family]
    out = {}
    for axis, (learned, exact) in (("quality", ("quality", "exact_quality")),
                                   ("diversity", ("diversity", "event_diversity"))):
        stat = lambda idx, a=learned, b=exact: spearman([m.mean(a, idx) for m in ms], [m.mean(b, idx) for m in ms])
        out[axis] = dict(rho=stat(None), ci=bootstrap(stat, n_prompts, reps=reps), points=len(ms))
    return out


def write_figures(results: dict[str, list[Measured]], s: EvalSettings, out: Path) -> dict[str, bool]:
    """fronts.json (both axes, for the app), fronts.png and fronts_exact.png, lambda.png and training.png; returns
    which optional figures exist."""
    main_fams = [f for f in results if f in (CFG_NEG, CFG_UNCOND, TEMP_BASE, TEMP_Q, LERP_QD, LERP_QB)
                 or f.startswith("CFG γ (")]
    fronts = {}
    for axis, (q, d) in AXES.items():
        xy = lambda ms, q=q, d=d: [(m.mean(d), m.mean(q)) for m in sorted(ms, key=lambda m: m.point.x)]
        fronts[axis] = {f: xy(results[f]) for f in main_fams}
        others = {f: xy(ms)[0] for f, ms in results.items() if f not in main_fams and len(ms) == 1}
        title = "nano: exact quality (0-6) vs exact diversity" if axis == "exact" else "nano: learned scores"
        xlabel = "exact diversity (mean event distance)" if axis == "exact" else "diversity (mean r_D with E)"
        quality_diversity_plot(fronts[axis], others, size=(900, 560), title=title, xlabel=xlabel).save(
            out / ("fronts_exact.png" if axis == "exact" else "fronts.png"))
    save_json(dict(fronts=fronts["learned"], fronts_exact=fronts["exact"],
                   settings=dict(prompts=s.prompts, clips=s.clips, seconds=s.seconds)), out / "fronts.json")
    lerp = sorted(results.get(LERP_QD, []), key=lambda m: m.point.x)
    if len(lerp) >= 3:
        lambda_plot([m.point.x for m in lerp], [m.mean("exact_quality") for m in lerp],
                    [m.mean("event_diversity") for m in lerp]).save(out / "lambda.png")
    training = {f: [(m.mean("event_diversity"), m.mean("exact_quality")) for m in sorted(ms, key=lambda m: m.point.x)]
                for f, ms in results.items() if f.startswith("training ")}
    if training:
        quality_diversity_plot(training, {}, size=(900, 560), title="along training (snapshots), exact axes").save(
            out / "training.png")
    return dict(lambda_plot=len(lerp) >= 3, training=bool(training))


def claims_table(table: list[dict]) -> list[str]:
    verdict = {"yes": "yes", "partly": "partly", "no": "**no**", "not testable": "not testable"}
    by_claim: dict[str, dict] = {}
    for c in table:
        by_claim.setdefault(c["claim"], {})[c["axis"]] = c
    lines = ["| claim | exact axes | learned scores | measured (exact axes) | measured (learned scores) |",
             "|---|---|---|---|---|"]
    for claim, axes in by_claim.items():
        cells = [verdict[axes[a]["holds"]] if a in axes else "–" for a in ("exact", "learned")]
        details = [axes[a]["detail"] if a in axes else "" for a in ("exact", "learned")]
        if "tokens and E" in axes:
            cells, details = [verdict[axes["tokens and E"]["holds"]]] * 2, [axes["tokens and E"]["detail"], ""]
        lines.append(f"| {claim} | {cells[0]} | {cells[1]} | {details[0]} | {details[1]} |")
    return lines


KINDS = ("instrument", "drums", "kit", "tempo", "key", "genre")


def key_points(results: dict[str, list[Measured]], teacher: CfgSetting) -> list[tuple[str, Measured]]:
    """The points the adherence table shows: base without and with the paper's CFG, the teacher, θ_q, λ = 0.5, θ_d
    and the β models, where measured."""
    find = lambda family, x: next((m for m in results.get(family, []) if m.point.x == x), None)  # noqa: E731
    named = [("base (no CFG)", find(CFG_NEG, 1.0)), ("base + the paper's CFG (γ = 3)", find(CFG_NEG, 3.0)),
             (f"the teacher ({teacher.description})", find(teacher.family, teacher.guidance)),
             ("base at temperature 0.85", find(TEMP_BASE, 0.85)), ("θ_q", find(LERP_QD, 0.0)),
             ("λ = 0.5", find(LERP_QD, 0.5)), ("θ_d", find(LERP_QD, 1.0))]
    named += [(family, ms[0]) for family, ms in sorted(results.items()) if family.startswith(BETA_MODEL) and ms]
    return [(name, m) for name, m in named if m is not None]


def adherence_table(results: dict[str, list[Measured]], teacher: CfgSetting) -> list[str]:
    lines = ["| point | " + " | ".join(KINDS) + " | melody plays | all parts play |",
             "|---|" + "---|" * (len(KINDS) + 2)]
    for name, m in key_points(results, teacher):
        k = m.result.by_kind
        cells = [f"{k[c][0] / k[c][1]:.2f} (n={k[c][1]})" if c in k and k[c][1] else "–" for c in KINDS]
        lines.append(f"| {name} | {' | '.join(cells)} | {m.result.lead_plays:.2f} | {m.result.parts:.2f} |")
    return lines


def report(table: list[dict], rows: list[dict], s: EvalSettings, figures: dict[str, bool], command: list[str],
           cached: int, elapsed: float, agree: dict, teacher: CfgSetting, results: dict | None = None) -> str:
    results = results or {}
    lines = ["# Quality–diversity evaluation of MusicGen-nano", "",
             f"Command: `python -m training.evaluate {' '.join(command)}`  ",
             f"Wall time of this run: {elapsed / 60:.1f} min on {torch.get_num_threads()} CPU thread(s), {cached} of "
             f"{len(rows)} points from the cache. {s.prompts} held-out {s.split} prompts × {s.clips} clips × "
             f"{s.seconds:g} s per point. Two pairs of axes: **exact** (read from nano's tokens, `engine.exact`: "
             f"exact quality = 5 · adherence to the caption's checkable requests + clean, 0 … 6; exact diversity = "
             f"mean pairwise event distance) and **learned** (quality = {OMEGA:g}·adherence + audio quality of the "
             f"learned scorers; diversity = mean pairwise r_D with E). The CFG teacher ({teacher.description}) was "
             f"chosen by `training.teacher_sweep` on validation prompts disjoint from the test prompts. ± are standard "
             f"errors over prompts; intervals are 95 % prompt bootstraps.", "", "## Claims", "",
             "Each claim is split into parts, each tested on a difference **paired over prompts** (the same prompts "
             "and seeds for every point) with a 95 % prompt-bootstrap interval: a part holds only when its interval "
             "lies on the claimed side. **yes** = every part holds; **partly** = some do, or every tested part does "
             "but another could not be tested; **no** = no tested part holds; **not testable** = none could be "
             "tested. \"Matches\" and \"at least as good\" are non-inferiority tests against margins written in "
             f"`training/claims.py` before these models were measured: quality {MARGIN['exact_quality']:g} (exact) / "
             f"{MARGIN['quality']:g} (learned), diversity {MARGIN['event_diversity']:g}; \"about half the cost\" = "
             f"the teacher takes ≥ {HALF_COST_RATIO:g}× θ_q's sampling time.", ""]
    lines += claims_table(table)
    lines += ["", "## Adherence by request type and parts playing", "",
              "Share of the decided requests met, per request type, over all clips of the point; then the share of "
              "clips in which the melody (lead) plays and in which every part the caption calls for plays "
              "(`engine.exact.parts_needed`).", ""]
    lines += adherence_table(results, teacher)
    lines += ["", "## Do the learned scorers agree with the exact metrics?", "",
              "Spearman rank correlation across all evaluated points (95 % prompt-bootstrap interval):", ""]
    lines += [f"- {axis}: ρ = {a['rho']:+.2f} ({a['ci'][0]:+.2f} … {a['ci'][1]:+.2f}) over {a['points']} points"
              for axis, a in agree.items()]
    lines += ["", "![fronts, exact axes](fronts_exact.png)", "", "![fronts, learned scores](fronts.png)", ""]
    lines += ["![lambda](lambda.png)", ""] if figures["lambda_plot"] else []
    lines += ["![training](training.png)", ""] if figures["training"] else []
    lines += ["## Points", "", "| family | x | exact quality | clean | melody plays | all parts | event diversity "
              "| learned quality | E diversity | Vendi | drums | noise | s/clip |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['x']:g} | {r['exact_quality']:.3f} ± {r['exact_quality_sem']:.3f} | "
              f"{r['clean']:.3f} | {r['lead_plays']:.2f} | {r['parts']:.2f} | {r['event_diversity']:.3f} ± "
              f"{r['event_diversity_sem']:.3f} | {r['quality']:.3f} ± {r['quality_sem']:.3f} | {r['diversity']:.3f} ± "
              f"{r['diversity_sem']:.3f} | {r['vendi']:.2f} | {r['drums']:.2f} | {r['degraded']:.2f} | "
              f"{r['sample_s_per_clip']:.3f} |" for r in rows]
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


def beta_models(s: EvalSettings) -> dict[str, float]:
    """The β of each --extra model trained like θ_d with β > 0 (its config.json, the trainer's: θ_d's reward): the
    models between θ_q (β = 0) and θ_d that claim 5 and the soup use. Read from the models, not from their names."""
    def config(path: str | Path) -> dict:
        file = Path(path) / "config.json"
        return json.loads(file.read_text()) if file.is_file() else {}
    reward = config(s.theta_d).get("reward", "embedding")
    betas = {}
    for name, path in (e.split("=", 1) for e in s.extra):
        c = config(path)
        if float(c.get("beta", 0)) > 0 and c.get("reward", "embedding") == reward:
            betas[name] = float(c["beta"])
    return betas


def main(argv=None) -> None:
    (requested,) = parse([EvalSettings], argv, description=__doc__)
    command = list(argv if argv is not None else sys.argv[1:])
    s = requested.effective()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ev = Evaluator(s, s.split)
    have, snapshots = load_points(ev, s)
    teacher = s.load_teacher()
    points = plan(s, have, snapshots, teacher, beta_models(s))
    cached = sum(ev.key(pt) in ev.cache for pt in points)
    results: dict[str, list[Measured]] = {}
    for i, pt in enumerate(points):
        t = time.time()
        m = ev.measure(pt)
        results.setdefault(pt.family, []).append(m)
        print(f"[{i + 1}/{len(points)}] {pt.label:40s} quality {m.mean('quality'):.3f} ± {m.sem('quality'):.3f}  "
              f"diversity {m.mean('diversity'):.3f} ± {m.sem('diversity'):.3f}  ({time.time() - t:.1f} s)", flush=True)
    speed = compare_speed(ev, teacher, repeats=1 if s.quick else 3) if have["q"] else None
    table = claims(results, s, speed, teacher)
    agree = agreement(results, s.prompts, s.bootstrap)
    rows = point_rows(results)
    save_csv(rows, list(rows[0]), out / "points.csv")
    figures = write_figures(results, s, out)
    text = report(table, rows, s, figures, command, cached, time.time() - t0, agree, teacher, results)
    if s.notes:
        text += "\n" + Path(s.notes).read_text()
    save_bytes(text.encode(), out / "report.md")
    for c in table:
        print(f"{c['holds'].upper():12s} [{c['axis']}] {c['claim']}\n       {c['detail']}")
    for axis, a in agree.items():
        print(f"learned vs exact {axis}: Spearman {a['rho']:+.2f} ({a['ci'][0]:+.2f} … {a['ci'][1]:+.2f})")
    print(f"wrote {out}/report.md in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
