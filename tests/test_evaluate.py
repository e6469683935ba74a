"""The evaluation command end to end in --quick mode on the nano weights, with tiny scorers, and its cache."""
import csv
import json
from argparse import Namespace

import numpy as np
import pytest
import torch

from engine.cfg import CfgSetting
from engine.checkpoint import save_state
from engine.model import load_model
from engine.scorers import Scorers
from training import evaluate, teacher_sweep
from training.corpus import heldout_prompts
from training.distill import DistillConfig, Distiller, eval_rows
from training.heldout import HeldoutResult, HeldoutSettings


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
                   str(setup / "E"), "--quality", str(setup / "Q"), "--out", str(out),
                   "--prompts", "3", "--clips", "2"])


def test_quick_mode_end_to_end_and_cache(setup, tmp_path, capsys):
    out = tmp_path / "eval"
    run(setup, out)
    rows = list(csv.DictReader(open(out / "points.csv")))
    families = {r["family"] for r in rows}
    assert {evaluate.CFG_NEG, evaluate.CFG_UNCOND, evaluate.TEMP_BASE, evaluate.TEMP_Q, evaluate.LERP_QD} <= families
    assert all(float(r["quality_sem"]) >= 0 and 0 <= float(r["drums"]) <= 1 for r in rows)
    report = (out / "report.md").read_text()
    assert "| claim | exact axes | learned scores |" in report and "Reward hacking" in report
    assert "Spearman rank correlation" in report and all(float(r["exact_quality"]) <= 6 for r in rows)
    fronts = json.loads((out / "fronts.json").read_text())["fronts"]
    assert len(fronts[evaluate.LERP_QD]) == 3 and (out / "fronts.png").exists() and (out / "lambda.png").exists()
    n_cached = len((out / "cache.jsonl").read_text().splitlines())
    assert n_cached == len(rows)
    capsys.readouterr()
    run(setup, out)  # everything cached: nothing recomputed, same numbers
    assert len((out / "cache.jsonl").read_text().splitlines()) == n_cached
    assert list(csv.DictReader(open(out / "points.csv"))) == rows


def _measured(family, x, quality, diversity, blend=(("base", 1.0),), n=40, seed=0):
    """A point with per-prompt values scattered (±0.01) around the given means; same scatter for every point."""

    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    return evaluate.Measured(evaluate.Point(family, x, blend),
                             HeldoutResult(list(quality + noise), list(diversity + noise), [3.0] * n, [0.8] * n, 0.5,
                                           0.0, 0.05))


def _results(d_quality, d_diversity, with_b5=False, bump=0.0):
    lerp = [_measured(evaluate.LERP_QD, lam, 3.0 + lam * (d_quality - 3.0) + (bump if lam == 0.5 else 0.0),
                      0.60 + lam * (d_diversity - 0.60)) for lam in (0.0, 0.5, 1.0)]
    results = {evaluate.CFG_NEG: [_measured(evaluate.CFG_NEG, g, 2.0 + g * 0.1, 0.8 - g * 0.05) for g in (1.0, 3.0)],
               evaluate.LERP_QD: lerp}
    if with_b5:
        results["β model 5"] = [_measured("β model 5", 5.0, 2.95, 0.62)]
    return results, Namespace(prompts=40, bootstrap=200)


def test_claims_on_synthetic_points_with_known_answers():
    # base (γ = 1) diversity 0.75 > θ_q 0.60 < θ_d 0.70, θ_d costs quality: claim 3 holds in every part
    results, args = _results(d_quality=2.5, d_diversity=0.70, bump=0.2)
    claims = {c["claim"][:2]: c for c in evaluate.claims(results, args)}
    assert claims["3."]["holds"] == "yes" and "θ_d − θ_q +0.100" in claims["3."]["detail"]
    # λ = 0.5 quality 2.95 vs the diagonal's 2.75: normalised excess (2.95 − 2.5) / 0.5 − 0.5 = +0.400; with no β
    # model to compare λ = 0.5 with, that part is untested, so the claim holds only partly
    assert claims["5."]["holds"] == "partly" and "above the diagonal by +0.400" in claims["5."]["detail"]
    assert "no intermediate-β" in claims["5."]["detail"]
    assert claims["5."]["parts"]["quality along λ above the diagonal"] is True
    results, args = _results(d_quality=2.5, d_diversity=0.70, bump=-0.2)
    assert {c["claim"][:2]: c for c in evaluate.claims(results, args)}["5."]["holds"] == "no"
    # θ_d not more diverse: claim 3 holds only partly, the diagonal is not testable, nor is claim 5
    results, args = _results(d_quality=2.5, d_diversity=0.60)
    claims = {c["claim"][:2]: c for c in evaluate.claims(results, args)}
    assert claims["3."]["holds"] == "partly" and not claims["3."]["parts"]["θ_d more diverse than θ_q"]
    assert claims["5."]["holds"] == "not testable" and "not more diverse" in claims["5."]["detail"]
    # θ_d more diverse at no quality cost: the diagonal is not testable; λ = 0.5 (quality 3.0, diversity 0.65)
    # beats a β = 5 model at (2.95, 0.62) on both axes: one part holds, one untested -> partly, never "yes"
    results, args = _results(d_quality=3.0, d_diversity=0.70, with_b5=True)
    claims = {c["claim"][:2]: c for c in evaluate.claims(results, args)}
    assert "costs no significant quality" in claims["5."]["detail"] and claims["5."]["holds"] == "partly"
    assert "λ = 0.5 − β model 5: quality +0.050" in claims["5."]["detail"]


def test_verdicts_follow_the_stated_rules():
    from training.claims import verdict  # noqa: PLC0415 (the rule alone)
    assert verdict({"a": True, "b": True}) == "yes"
    assert verdict({"a": True, "b": None}) == "partly"  # an untested part is never a yes
    assert verdict({"a": True, "b": False}) == "partly"
    assert verdict({"a": False, "b": None}) == "no"
    assert verdict({"a": None}) == "not testable"


def test_matching_the_teacher_is_a_paired_non_inferiority_test():
    from training import claims as c  # noqa: PLC0415
    teacher = CfgSetting(guidance=3.0)
    def families(theta_q_quality):  # noqa: E306
        results, args = _results(d_quality=2.5, d_diversity=0.70)
        results[evaluate.LERP_QD][0] = _measured(evaluate.LERP_QD, 0.0, theta_q_quality, 0.60)
        return c.Families(results, args.prompts, args.bootstrap)
    speed = {"teacher": 2.0, "θ_q": 1.0}
    # the teacher (γ = 3 on CFG_NEG) has quality 2.3; θ_q 0.1 below it is within the 0.25 margin, 0.5 below is not
    assert c.claim_distilled(families(2.2), speed, teacher)["holds"] == "yes"
    assert c.claim_distilled(families(1.8), speed, teacher)["holds"] == "partly"  # the cost part still holds
    assert c.claim_distilled(families(2.2), {"teacher": 1.2, "θ_q": 1.0}, teacher)["holds"] == "partly"


def test_the_trainer_and_the_evaluation_measure_a_point_alike(setup, tmp_path):
    """The trainer's eval rows and the evaluation's points come from one routine (training.heldout): the base without
    and with CFG give the same numbers in both."""

    settings = evaluate.EvalSettings(embedding=str(setup / "E"), quality=str(setup / "Q"), prompts=3, clips=2,
                                     seconds=1.0, out=str(tmp_path))
    ev = evaluate.Evaluator(settings)
    distiller = Distiller(ev.service.model, DistillConfig(seconds=1.0, prompts=2, samples=2))
    held = HeldoutSettings(prompts=3, clips=2, seconds=1.0, seed=0)
    rows = eval_rows(distiller, 0, heldout_prompts(0, 3), held, Scorers.from_folders(setup / "E", setup / "Q"))
    assert [r["model"] for r in rows] == ["base", "base + CFG γ=3"]
    for row, gamma in zip(rows, (1.0, 3.0), strict=True):
        point = ev.measure(evaluate.Point(evaluate.CFG_NEG, gamma, guidance=gamma)).result.summary()
        for name in ("quality", "quality_sem", "diversity", "diversity_sem", "vendi", "event_diversity"):
            assert row[name] == point[name], name


def test_teacher_sweep_chooses_a_cfg_setting_on_validation_prompts(setup, tmp_path):
    rows = teacher_sweep.main(["--embedding", str(setup / "E"), "--quality", str(setup / "Q"), "--prompts", "2",
                               "--clips", "2", "--seconds", "1", "--gammas", "1", "2", "--alphas", "0", "0.1",
                               "--out", str(tmp_path)])
    families = {r["family"] for r in rows}
    assert {"no CFG", "no CFG, mask only, α=0.1", "CFG, negative prompt, α=0", "CFG, unconditional, α=0.1"} <= families
    assert [r["exact_quality"] for r in rows] == sorted((r["exact_quality"] for r in rows), reverse=True)
    chosen = json.loads((tmp_path / "teacher.json").read_text())
    assert chosen["guidance"] == 2.0 and chosen["distill_flags"][:2] == ["--guidance", "2"]
    assert "Chosen teacher" in (tmp_path / "sweep.md").read_text()


def test_the_teacher_sweep_disqualifies_a_setting_that_silences_a_part():
    row = lambda q, lead, parts, g=3.0: dict(guidance=g, exact_quality=q, lead_plays=lead, parts=parts)  # noqa: E731
    rows = [row(4.6, 0.06, 0.06), row(4.5, 0.95, 0.85), row(4.4, 0.98, 0.97), row(4.9, 1.0, 1.0, g=1.0)]
    assert teacher_sweep.chosen(rows) == rows[2]  # the mask's silent lead, then a missing part, then no CFG: skipped
    with pytest.raises(SystemExit, match="keeps the lead"):
        teacher_sweep.chosen(rows[:2])
