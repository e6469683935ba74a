"""The real-MusicGen recipe (`training.recipe`) end to end at tiny scale, and what the app then serves."""
import csv
import json

import numpy as np
import pytest

import app
from engine.checkpoint import CheckpointError
from engine.service import MusicService, Request
from engine.studio import make_studio
from training import recipe
from training.recipe_prompts import make_prompts


def test_prompts_are_unique_and_the_heldout_ones_new_in_text_and_in_genre_and_mood():
    p = make_prompts(0, 300, 40)
    assert len(p["train"]) == 300 and len(p["heldout"]) == 40
    assert len(set(p["train"]) | set(p["heldout"])) == 340
    assert make_prompts(0, 300, 40) == p and make_prompts(1, 300, 40) != p  # a seeded draw


def test_the_whole_recipe_on_a_tiny_random_musicgen_then_the_app_serves_it(tmp_path):
    out = tmp_path / "recipe"
    recipe.main(["--base", "debug", "--out", str(out), "--smoke"])
    for stage in recipe.STAGES:
        assert json.loads((out / stage / "done.json").read_text())["stage"] == stage
    report = (out / "eval" / "report.md").read_text()
    assert "θ_d − θ_q" in report and "| θ_d (λ = 1) |" in report
    recipe.main(["--base", "debug", "--out", str(out), "--smoke"])  # resumable: everything done, nothing redone

    # what the app loads: the service with both θ and E, generating at a λ in between
    service, notices = MusicService.from_sources("debug", str(out / "theta_q"), str(out / "theta_d"))
    assert notices == [] and 0 < service.relative_distance("d") < 0.5
    gen = service.generate_merged(Request("calm piano", 2, 0.5, seed=1), 0.5)
    assert gen.audio.shape[0] == 2
    flags = ["--base", "debug", "--theta-q", str(out / "theta_q"), "--theta-d", str(out / "theta_d"), "--embedding",
             str(out / "embedding"), "--ratings-db", str(tmp_path / "r.sqlite")]
    with pytest.raises(CheckpointError, match="not in the weights manifest"):  # the recipe's own θ: not trusted yet
        make_studio(app.parse_args(flags))
    allowed = make_studio(app.parse_args(flags + ["--allow-unverified-weights"]))
    assert any("Not verified" in line for line in allowed.banner)
    studio = make_studio(app.parse_args(flags + ["--manifest", str(out / "manifest.json")]))  # the recipe's manifest
    assert not any("Not verified" in line for line in studio.banner)
    result = studio.generate("calm piano", 2, 0.5, 3, 1.0, "θ_q ↔ θ_d", 0.5, False, 3.0, "Bad audio quality.")
    assert result.scores["merged"].diversity.shape == (2, 2) and len(result.files) == 3
    assert not studio.readable and str(out / "theta_d") in studio.models  # nothing nano-specific for this base
    assert "**Quality**: none (no CLAP model configured" in studio.models and "Diversity" in studio.models


@pytest.mark.slow  # trains E for real on nano's clips (about 20 s): `make test-slow`
def test_e_learns_from_clips_the_base_generates(tmp_path):
    """E on clips nano generates for recipe prompts: held-out retrieval far above chance, training loss falling."""
    out = tmp_path / "nano"
    recipe.main(["--base", "weights/nano", "--out", str(out), "--smoke", "--stages", "prompts", "embedding",
                 "--train-prompts", "96", "--heldout-prompts", "24", "--e-steps", "200", "--e-batch", "16"])
    metrics = json.loads((out / "embedding" / "metrics.json").read_text())
    assert metrics["retrieval_top1"] >= metrics["chance"] + 0.2
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "embedding" / "log.csv"))]
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
