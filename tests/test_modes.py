"""Merge modes as a registry (`engine.modes`): today's API values still work, and a mode registered here reaches the
app's Studio, its blind A/B and the evaluation's plan with no other file touched."""
import numpy as np
import pytest
import torch

from engine.merge import Blend
from engine.model import build_debug_model
from engine.modes import MERGE_MODES, MergeMode, available_modes, merge_mode, register, unregister
from engine.score_codec import ScoreCodec
from engine.service import MusicService, Request
from engine.studio import Studio
from training import evaluate


@pytest.fixture(scope="module")
def service():
    model = build_debug_model(seed=0)
    model.codec = ScoreCodec()
    svc = MusicService(model)
    gen = torch.Generator().manual_seed(3)
    for name in ("q", "d"):
        svc.add_checkpoint(name, {k: v + 0.02 * torch.randn(v.shape, generator=gen)
                                  for k, v in svc.base.model.state_dict().items() if v.is_floating_point()})
    return svc


@pytest.fixture
def task_arithmetic():
    """θ_q + λ·(θ_d − base): the diversity direction added to θ_q (an affine blend, weights q 1, d λ, base −λ)."""
    mode = register(MergeMode(
        "q+task", "Quality model plus the diversity direction (task arithmetic)", "0 = θ_q, 1 = θ_q + (θ_d − base)",
        "Diversity added (λ)", "θ_q + λ(θ_d − base)",
        lambda lam, models: Blend((("q", 1.0), ("d", lam), ("base", -lam))), needs=("q", "d"), ab_name="task",
        ab_points=(0.5,), family="task arithmetic"))
    yield mode
    unregister(mode.key)


def test_keys_are_ascii_and_the_old_api_values_are_aliases():
    assert list(MERGE_MODES) == ["q-d", "q-base", "soup"]
    for old, key in (("θ_q ↔ θ_d", "q-d"), ("θ_q ↔ base", "q-base"), ("uniform soup", "soup")):
        assert merge_mode(old).key == key == merge_mode(key).key
    with pytest.raises(ValueError, match="unknown mode 'nope'"):
        merge_mode("nope")
    with pytest.raises(ValueError, match="ASCII"):
        MergeMode("θ", "x", "x", "x", "x", lambda lam, models: Blend.lerp("q", "d", lam))
    with pytest.raises(ValueError, match="already registered"):
        register(MergeMode("q-d", "x", "x", "x", "x", lambda lam, models: Blend.lerp("q", "d", lam)))


def test_the_soup_needs_three_models_and_ignores_lambda():
    assert [m.key for m in available_modes(["q", "d"])] == ["q-d", "q-base"]
    soup = MERGE_MODES["soup"]
    assert soup.available(["q", "d", "b15"]) and not soup.uses_lambda
    assert soup.blend(None, ["q", "d", "b15"]) == Blend.soup(["q", "d", "b15"])
    assert soup.caption(0.3) == "uniform soup" and soup.file_tag(0.3) == "soup"
    assert MERGE_MODES["q-d"].caption(0.25) == "θ_q ↔ θ_d λ=0.25" and MERGE_MODES["q-d"].file_tag(0.25) == "q-d-lam0.25"
    assert [label for label, _ in MERGE_MODES["q-base"].presets()] == [
        "Quality model (λ = 0)", "Halfway (λ = 0.5)", "Original model (λ = 1)"]


def test_a_mode_registered_here_serves_compares_and_is_evaluated(service, task_arithmetic, tmp_path):
    studio = Studio(service, out_dir=tmp_path)
    assert "q+task" in [m.key for m in studio.modes]
    r = studio.generate("rock song", 2, 0.5, 5, 1.0, "q+task", 0.5, False, 3.0, "")
    alone = service.generate_merged(Request("rock song", 2, 0.5, 5), Blend((("q", 1.0), ("d", 0.5), ("base", -0.5))))
    assert torch.equal(r.merged.codes, alone.codes) and r.label == "θ_q + λ(θ_d − base) λ=0.50"
    assert "merged in" in studio.merge("q+task", 0.7) or "already merged" in studio.merge("q+task", 0.7)
    e = service.mixer.endpoints  # the serving weights are exactly θ_q + 0.7·(θ_d − base)
    assert torch.allclose(service.serving.flat, e["q"] + 0.7 * (e["d"] - e["base"]), atol=1e-6)
    token, a, b = studio.new_pair("rock song", "task λ=0.5", "merged λ=0.5", 1, 0.5, seed=5)
    assert {a.model, b.model} == {"1·q + 0.5·d + -0.5·base", "0.5·q + 0.5·d"}
    settings = evaluate.EvalSettings(quick=False, lambda_step=0.25)
    points = evaluate.plan(settings, {"q": True, "d": True}, {}, studio.teacher)
    task = [p for p in points if p.family == "task arithmetic"]
    assert [p.x for p in task] == [0.0, 0.25, 0.5, 0.75, 1.0] and task[-1].blend == (("q", 1.0), ("d", 1.0),
                                                                                   ("base", -1.0))
    assert np.isclose(sum(w for _, w in task[2].blend), 1.0)
