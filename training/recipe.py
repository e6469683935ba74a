"""One command from a MusicGen to the app's λ slider: prompts, E, θ_q, θ_d and their evaluation (the paper's recipe).

    python -m training.recipe --base facebook/musicgen-small --out runs/small --allow-download    # GPUs
    python -m training.recipe --base debug --out runs/recipe-smoke --smoke                         # CPU, ~1 minute

Stages, in order and resumable (a finished stage is skipped: its output folder holds `done.json`; distillation
resumes mid-run from its own checkpoints):

1. **prompts** → OUT/prompts.json: `training.recipe_prompts` (written by code; training and held-out prompts
   disjoint by text and by genre–mood pair).
2. **embedding** → OUT/embedding: clips the base itself generates for the training prompts (plain sampling, each
   two E windows long), resampled to 16 kHz; E trained on them with the paper's recipe (log-mel at 16 kHz, 4 s crops,
   window 512, hop 256, a ViT, contrastive loss with the two halves of one clip as positives:
   `training.train_embedding.fit`); its same-source retrieval on held-out prompts' clips in metrics.json.
3. **theta_q** → OUT/theta_q: `training.distill`, β = 0, from the base, teacher CFG γ = 3 with "Bad audio quality.".
4. **theta_d** → OUT/theta_d: `training.distill` from θ_q, β = 15, diversity reward r_D with OUT/embedding.
5. **evaluate** → OUT/eval: held-out prompts through the base (plain and with the teacher's CFG), θ_q, λ = 0.5 and
   θ_d: E diversity, CLAP adherence where `--clap` names a CLAP model, sampling time; report.md with the points and
   the paired differences the paper's claims rest on, fronts.png when there is a quality axis.

Multi-GPU: each distillation stage runs in this process; for several GPUs run the printed `training.distill`
commands under `accelerate launch` (the trainer supports it). The app then serves the result:

    python app.py --base BASE --theta-q OUT/theta_q --theta-d OUT/theta_d --embedding OUT/embedding \
        --manifest OUT/manifest.json [--clap ...]        # the manifest: the digests of the checkpoints it made
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from engine.cfg import DEFAULT_NEGATIVE_PROMPT, PAPER_GAMMA, CfgSetting
from engine.checkpoint import save_json
from engine.embedding import AudioEmbedder
from engine.figures import quality_diversity_plot
from engine.model import load_model
from engine.scorers import Scorers
from engine.service import MusicService, Request, generate
from engine.trust import write_manifest
from training import distill, export
from training.frontier import standard_error
from training.heldout import HeldoutResult, HeldoutSettings, measure
from training.recipe_prompts import make_prompts
from training.settings import parse, setting, to_flags
from training.train_embedding import EmbeddingSettings, TowerSettings, fit, retrieval_top1

STAGES = ("prompts", "embedding", "theta_q", "theta_d", "evaluate")
PAPER_BETA = 15.0


@dataclass(frozen=True)
class RecipeSettings:
    base: str = setting("facebook/musicgen-small", "the base MusicGen (hub id, local folder, or 'debug')")
    out: str = setting("runs/recipe", "output folder (one subfolder per stage)")
    allow_download: bool = setting(False, "let transformers download the base (and --clap) from the hub")
    device: str = setting("", "cpu, cuda, ... (default: cuda when available)")
    seed: int = setting(0, "seed of prompts, clips, E and the distillation")
    stages: list[str] = setting(list(STAGES), "stages to run, in order (finished ones are skipped)", choices=STAGES)
    smoke: bool = setting(False, "tiny sizes everywhere: the whole recipe in about a minute on a CPU (a test)")
    # prompts and E
    train_prompts: int = setting(2000, "training prompts")
    heldout_prompts: int = setting(128, "held-out prompts (E's retrieval eval and the evaluation draw from them)")
    e_clips_per_prompt: int = setting(1, "clips the base generates per training prompt for E")
    e_steps: int = setting(3000, "E's optimizer steps")
    e_batch: int = setting(48, "clips per E step (two crops each)")
    # distillation (the paper's settings where it gives them)
    guidance: float = setting(PAPER_GAMMA, "the teacher's CFG γ")
    negative_prompt: str = setting(DEFAULT_NEGATIVE_PROMPT, "the teacher's negative prompt")
    beta: float = setting(PAPER_BETA, "θ_d's diversity coefficient β")
    q_steps: int = setting(1000, "θ_q's optimizer steps")
    d_steps: int = setting(1000, "θ_d's optimizer steps")
    prompts_per_step: int = setting(8, "prompts per micro-batch")
    samples: int = setting(4, "samples per prompt (≥ 3 for the leave-one-out baseline)")
    seconds: float = setting(10.0, "length of the on-policy clips (s; the paper: 10)")
    accumulate: int = setting(4, "micro-batches per optimizer step (8 × 4 × 4 = 128 clips, the paper's batch)")
    lr: float = setting(1.5e-4, "peak learning rate (the paper's)")
    autocast: str = setting("auto", "bf16 autocast of the trainer's forwards: 'auto' = on CUDA GPUs", choices=(
        "auto", "bf16", "none"))
    checkpointing: bool = setting(False, "gradient checkpointing in the trainer (needed for musicgen-medium on 80 GB)")
    # evaluation
    eval_prompts: int = setting(32, "held-out prompts of the evaluation")
    eval_clips: int = setting(4, "clips per prompt and point")
    eval_seconds: float = setting(10.0, "clip length of the evaluation (s)")
    clap: str = setting("", "a transformers ClapModel for adherence (e.g. laion/clap-htsat-unfused); '' = none")

    def __post_init__(self):
        if self.samples < 3 or self.e_batch < 2 or min(self.train_prompts, self.heldout_prompts) < 2:
            raise ValueError("samples must be ≥ 3, e_batch ≥ 2, train_prompts and heldout_prompts ≥ 2")
        if self.eval_prompts > self.heldout_prompts and not self.smoke:
            raise ValueError(f"eval_prompts ({self.eval_prompts}) > heldout_prompts ({self.heldout_prompts})")

    def sized(self) -> "RecipeSettings":
        """The settings to run: as given, or with `--smoke` the tiny sizes of SMOKE wherever a setting was left at its
        default (so a test can still ask for more E steps, say)."""
        if not self.smoke:
            return self
        defaults = RecipeSettings()
        return dataclasses.replace(self, **{k: v for k, v in SMOKE.items() if getattr(self, k) == getattr(defaults, k)})


SMOKE = dict(train_prompts=24, heldout_prompts=8, e_steps=30, e_batch=8, q_steps=2, d_steps=2, prompts_per_step=2,
             samples=3, seconds=0.5, accumulate=1, eval_prompts=2, eval_clips=3, eval_seconds=0.5, lr=1e-3)
TINY_TOWER = dict(dim=32, layers=1, heads=2, out_dim=16, window_s=1.0)  # the smoke test's E


# ---------------------------------------------------------------- stages
class Recipe:
    def __init__(self, s: RecipeSettings, tower: TowerSettings):
        self.s, self.tower = s.sized(), tower
        self.out = Path(s.out)
        self.device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._base = None

    @property
    def base(self):
        if self._base is None:
            self._base = load_model(self.s.base, device=self.device, allow_download=self.s.allow_download)
        return self._base

    def done(self, stage: str) -> bool:
        return (self.out / stage / "done.json").exists()

    def finish(self, stage: str, t0: float, **facts) -> None:
        if stage in ("embedding", "theta_q", "theta_d"):  # the app trusts what this manifest lists (engine.trust)
            made = [f for name in ("embedding", "theta_q", "theta_d") for f in (self.out / name).glob("*.safetensors")]
            write_manifest(made, self.out, self.out / "manifest.json")
        save_json(dict(stage=stage, wall_s=round(time.time() - t0, 1), **facts), self.out / stage / "done.json")
        print(f"[{stage}] done in {(time.time() - t0) / 60:.1f} min {facts or ''}", flush=True)

    def prompts(self) -> dict[str, list[str]]:
        return json.loads((self.out / "prompts" / "prompts.json").read_text())

    def run(self) -> None:
        for stage in STAGES:
            if stage in self.s.stages and not self.done(stage):
                t0 = time.time()
                print(f"[{stage}] starting", flush=True)
                getattr(self, f"stage_{stage}")(t0)

    def stage_prompts(self, t0: float) -> None:
        prompts = make_prompts(self.s.seed, self.s.train_prompts, self.s.heldout_prompts)
        save_json(prompts, self.out / "prompts" / "prompts.json")
        self.finish("prompts", t0, train=len(prompts["train"]), heldout=len(prompts["heldout"]))

    def clips(self, prompts: list[str], per_prompt: int, seconds: float, rate: int, seed: int) -> torch.Tensor:
        """(len(prompts) · per_prompt, seconds · rate) audio the base generates (plain sampling), at `rate`."""
        out = []
        for i, prompt in enumerate(prompts):
            req = Request(prompt, per_prompt, seconds, seed=seed * 1_000_003 + i)
            gen = generate(self.base, self.base.decoder, req, "base")
            audio = torch.from_numpy(gen.audio.mean(axis=1))  # mono, as E and the scorers hear
            if gen.sample_rate != rate:
                audio = AF.resample(audio, gen.sample_rate, rate)
            out.append(audio[:, :int(seconds * rate)])
        return torch.cat(out)

    def stage_embedding(self, t0: float) -> None:
        s, prompts = self.s, self.prompts()
        config = self.tower.config()
        if s.smoke:
            config = dataclasses.replace(config, **TINY_TOWER)
        window = config.window_s
        torch.manual_seed(s.seed)
        model = AudioEmbedder(config)
        pool = self.clips(prompts["train"], s.e_clips_per_prompt, 2 * window, config.sample_rate, s.seed)
        heldout = self.clips(prompts["heldout"], 1, 2 * window, config.sample_rate, s.seed + 1)
        print(f"[embedding] generated {len(pool)} + {len(heldout)} clips of {2 * window:g} s", flush=True)
        settings = EmbeddingSettings(seed=s.seed, pool=len(pool), eval_candidates=len(heldout), batch=s.e_batch,
                                     steps=s.e_steps, warmup=max(s.e_steps // 10, 1),
                                     eval_every=max(s.e_steps // 5, 1), out=str(self.out / "embedding"))
        model.eval()
        untrained = retrieval_top1(model, heldout, config.sample_rate)
        model.train()
        top1 = fit(model, pool, np.zeros(len(pool), dtype=int), heldout, settings, self.tower)
        chance = 1 / len(heldout)
        save_json(dict(retrieval_top1=top1, untrained_top1=untrained, chance=chance, heldout_clips=len(heldout),
                       train_clips=len(pool), clip_s=2 * window), self.out / "embedding" / "metrics.json")
        self.finish("embedding", t0, retrieval_top1=round(top1, 3), untrained=round(untrained, 3),
                    chance=round(chance, 3))

    @property
    def autocast(self) -> str:
        if self.s.autocast != "auto":
            return self.s.autocast
        return "bf16" if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else "none"

    def distill_settings(self, beta: float, steps: int, run: Path, init: Path | None = None) -> tuple:
        """The trainer's settings for one distillation stage: (DistillConfig, RunSettings)."""
        s, every = self.s, max(steps // 10, 1)
        objective = distill.DistillConfig(beta=beta, beta_warmup=every, guidance=self.teacher.guidance,
                                          negative_prompt=self.teacher.negative, prompts=s.prompts_per_step,
                                          samples=s.samples, seconds=s.seconds, lr=s.lr)
        settings = distill.RunSettings(base=s.base, init=str(init) if init else None, seed=s.seed, steps=steps,
                                       embedding=str(self.out / "embedding"), quality="", accumulate=s.accumulate,
                                       prompts_file=str(self.out / "prompts" / "prompts.json"), eval_every=0,
                                       eval_prompts=s.eval_prompts, eval_samples=s.eval_clips, snapshot_every=0,
                                       save_every=every, autocast=self.autocast, checkpointing=s.checkpointing,
                                       out=str(run))
        return objective, settings

    @property
    def teacher(self) -> CfgSetting:
        """The CFG setting θ_q is distilled from (the paper's by default)."""
        return CfgSetting(self.s.guidance, self.s.negative_prompt)

    def stage_theta_q(self, t0: float) -> None:
        self._distill("theta_q", *self.distill_settings(0.0, self.s.q_steps, self.out / "runs" / "theta_q"), t0)

    def stage_theta_d(self, t0: float) -> None:
        settings = self.distill_settings(self.s.beta, self.s.d_steps, self.out / "runs" / "theta_d",
                                         init=self.out / "theta_q")
        self._distill("theta_d", *settings, t0)

    def _distill(self, stage: str, objective: distill.DistillConfig, settings: distill.RunSettings, t0: float) -> None:
        if self.s.allow_download:
            print("note: the trainer loads the base from the local cache (run once with --allow-download first)")
        flags = to_flags(objective, settings)
        print("[{}] python -m training.distill {}".format(stage, " ".join(repr(a) if " " in a or not a else a
                                                                         for a in flags)), flush=True)
        distill.run(objective, settings)
        export.export_distill(Path(settings.out), self.out / stage)
        self.finish(stage, t0)

    def stage_evaluate(self, t0: float) -> None:
        s = self.s
        service, _ = MusicService.from_sources(s.base, str(self.out / "theta_q"), str(self.out / "theta_d"),
                                               s.allow_download, device=self.device)
        scorers = Scorers.from_folders(str(self.out / "embedding"), None, clap=s.clap or None,
                                       allow_download=s.allow_download)
        settings = HeldoutSettings(s.eval_prompts, s.eval_clips, s.eval_seconds, s.seed)
        prompts = self.prompts()["heldout"][:s.eval_prompts]
        points = {"base": (service.generate_base, {}),
                  self.teacher.label: (service.generate_base, dict(guidance=s.guidance, negative=s.negative_prompt)),
                  "θ_q (λ = 0)": (lambda r: service.generate_merged(r, 0.0), {}),
                  "λ = 0.5": (lambda r: service.generate_merged(r, 0.5), {}),
                  "θ_d (λ = 1)": (lambda r: service.generate_merged(r, 1.0), {})}
        results = {}
        for name, (sample, kw) in points.items():
            results[name] = measure(sample, prompts, settings, scorers, readable=False, **kw)
            print(f"[evaluate] {name}: diversity {results[name].mean('diversity'):.3f}", flush=True)
        write_report(self.out / "eval", results, s, scorers.clap is not None)
        self.finish("evaluate", t0, points=len(results))


# ---------------------------------------------------------------- the evaluation's report
def paired(a: HeldoutResult, b: HeldoutResult, name: str) -> str:
    d = np.asarray(getattr(a, name)) - np.asarray(getattr(b, name))
    return f"{d.mean():+.3f} ± {standard_error(d):.3f}"


def write_report(folder: Path, results: dict[str, HeldoutResult], s: RecipeSettings, has_quality: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(results)
    base, cfg, q, half, d = (results[n] for n in names)
    lines = [f"# Evaluation of the recipe's models on `{s.base}`", "",
             f"{s.eval_prompts} held-out prompts × {s.eval_clips} clips × {s.eval_seconds:g} s per point; ± are "
             "standard errors over prompts. Diversity: mean pairwise r_D with the recipe's E. Quality: "
             + ("CLAP adherence (`--clap`)." if has_quality else "none (no `--clap` given)."), "",
             "| point | diversity | quality | s per clip |", "|---|---|---|---|"]
    for n, r in results.items():
        quality = f"{r.mean('adherence'):.3f} ± {r.sem('adherence'):.3f}" if has_quality else "–"
        lines.append(f"| {n} | {r.mean('diversity'):.3f} ± {r.sem('diversity'):.3f} | {quality} | "
                     f"{r.sample_s_per_clip:.3f} |")
    lines += ["", "Paired differences over prompts (the paper's claims rest on their signs):", "",
              f"- CFG lowers diversity: CFG − base {paired(cfg, base, 'diversity')}",
              f"- distillation alone lowers it: θ_q − base {paired(q, base, 'diversity')}",
              f"- the diversity reward raises it: θ_d − θ_q {paired(d, q, 'diversity')}",
              f"- λ = 0.5 sits between: λ = 0.5 − θ_q {paired(half, q, 'diversity')}"]
    if has_quality:
        lines += [f"- CFG raises adherence: CFG − base {paired(cfg, base, 'adherence')}",
                  f"- θ_q keeps it without CFG: θ_q − CFG {paired(q, cfg, 'adherence')}",
                  f"- θ_d's cost: θ_d − θ_q {paired(d, q, 'adherence')}"]
        points = {n: (r.mean("diversity"), r.mean("adherence")) for n, r in results.items()}
        quality_diversity_plot({}, points, title="CLAP adherence vs E diversity",
                               xlabel="diversity (mean r_D)").save(folder / "fronts.png")
        lines += ["", "![fronts](fronts.png)"]
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    s, tower = parse([RecipeSettings, TowerSettings], argv, description=__doc__)
    Recipe(s, tower).run()


if __name__ == "__main__":
    main()
