"""The evaluation command end to end in --quick mode on the nano weights, with tiny scorers, and its cache."""
import csv
import json

import pytest
import torch

from engine.checkpoint import save_state
from engine.model import load_model
from training import evaluate


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_scorer_dirs):
    root = tmp_path_factory.mktemp("eval")
    for name, src in zip("EQ", tiny_scorer_dirs, strict=True):
        (root / name).symlink_to(src)
    base = load_model("weights/nano").decoder.model
    gen = torch.Generator().manual_seed(0)
    for name, scale in (("q", 0.0), ("d", 0.02)):  # θ_q = base, θ_d = a perturbed base
        save_state({k: v + scale * torch.randn(v.shape, generator=gen) for k, v in base.named_parameters()},
                   root / name / "decoder.safetensors")
    return root


def run(setup, out):
    evaluate.main(["--quick", "--theta-q", str(setup / "q"), "--theta-d", str(setup / "d"), "--embedding",
                   str(setup / "E"), "--quality", str(setup / "Q"), "--out", str(out), "--prompts", "3", "--clips", "2"])


def test_quick_mode_end_to_end_and_cache(setup, tmp_path, capsys):
    out = tmp_path / "eval"
    run(setup, out)
    rows = list(csv.DictReader(open(out / "points.csv")))
    families = {r["family"] for r in rows}
    assert {evaluate.CFG_NEG, evaluate.CFG_UNCOND, evaluate.TEMP_BASE, evaluate.TEMP_Q, evaluate.LERP_QD} <= families
    assert all(float(r["quality_sem"]) >= 0 and 0 <= float(r["drums"]) <= 1 for r in rows)
    report = (out / "report.md").read_text()
    assert "| claim | holds? | measured |" in report and "Reward hacking" in report
    fronts = json.loads((out / "fronts.json").read_text())["fronts"]
    assert len(fronts[evaluate.LERP_QD]) == 3 and (out / "fronts.png").exists() and (out / "lambda.png").exists()
    n_cached = len((out / "cache.jsonl").read_text().splitlines())
    assert n_cached == len(rows)
    capsys.readouterr()
    run(setup, out)  # everything cached: nothing recomputed, same numbers
    assert len((out / "cache.jsonl").read_text().splitlines()) == n_cached
    assert list(csv.DictReader(open(out / "points.csv"))) == rows
