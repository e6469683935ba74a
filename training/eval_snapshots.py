"""Re-evaluate a distillation run after the fact (e.g. with newer scorers): rewrites the run's `eval.csv`.

The run's own settings (`config.json`: base, teacher, clip length, held-out prompts and clips, seed) are kept; only
the scorers come from the flags. Rows: the references at step 0 (base without and with the teacher's CFG) and the
run's starting student (the base, or its `--init` weights), then every snapshot in `snapshots/`, each measured by
`training.distill.eval_rows` exactly as during training.

    python -m training.eval_snapshots --run runs/theta_q
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from engine import shipped
from engine.checkpoint import CheckpointError, save_csv
from training.corpus import heldout_prompts
from training.distill import EVAL_FIELDS, DistillConfig, RunSettings, build_distiller, eval_rows
from training.heldout import HeldoutSettings
from training.settings import parse, setting


@dataclass(frozen=True)
class SnapshotSettings:
    run: str = setting("runs/distill", "the run folder (config.json, snapshots/)")
    embedding: str = setting(shipped.EMBEDDING, "E for diversity ('' = none)")
    quality: str = setting(shipped.QUALITY, "quality scorer ('' = none)")


def run_settings(folder: Path, settings: SnapshotSettings) -> tuple[DistillConfig, RunSettings, int]:
    """The run's objective and settings from its config.json (scorers replaced), and its number of processes."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: not a readable run configuration ({e})") from None
    pick = lambda cls: {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    run = dataclasses.replace(RunSettings(**pick(RunSettings)), embedding=settings.embedding,
                              quality=settings.quality)
    return DistillConfig(**pick(DistillConfig)), run, int(config.get("processes", 1))


def eval_snapshots(settings: SnapshotSettings) -> list[dict]:
    folder = Path(settings.run)
    objective, run, world = run_settings(folder, settings)
    # β only shapes training; evaluating needs no reward (and so no E unless diversity is measured)
    distiller, scorers = build_distiller(dataclasses.replace(objective, beta=0.0), run, world)
    if run.init:
        distiller.load_student(run.init)
    prompts = heldout_prompts(run.seed, run.eval_prompts)
    held = HeldoutSettings(run.eval_prompts, run.eval_samples, objective.seconds, run.seed)
    rows = eval_rows(distiller, 0, prompts, held, scorers)
    for snap in sorted((folder / "snapshots").glob("step_*.safetensors")):
        distiller.load_student(snap)
        rows += eval_rows(distiller, int(snap.stem.split("_")[1]), prompts, held, scorers)
        print(f"evaluated {snap.name}", flush=True)
    save_csv(rows, EVAL_FIELDS, folder / "eval.csv")
    return rows


def main(argv=None) -> None:
    (settings,) = parse([SnapshotSettings], argv, description=__doc__)
    eval_snapshots(settings)


if __name__ == "__main__":
    main()
