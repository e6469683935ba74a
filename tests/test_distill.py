"""One step of diversity-rewarded CFG distillation on the tiny random model."""
import pytest
import torch

from engine.model import build_debug_model
from engine.score_codec import ScoreCodec
from training.distill import DistillConfig, Distiller

PROMPTS = ["rock song", "calm piano"]


def spectral_embedder(audio, sample_rate):
    """A simple fixed audio embedding for tests: log band energies of the spectrum."""
    spec = torch.fft.rfft(audio, dim=-1).abs() ** 2
    bands = torch.stack([b.mean(-1) for b in spec.chunk(16, dim=-1)], dim=-1)
    return torch.log(bands + 1e-8)


@pytest.fixture(scope="module")
def base():
    model = build_debug_model(seed=0)
    model.codec = ScoreCodec()  # the random EnCodec renders the same audio for any codes; this one does not
    return model


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=-1), "beta must be ≥ 0"),
    (dict(guidance=0.5), "guidance must be ≥ 1"),
    (dict(temperature=0), "temperature must be > 0"),
    (dict(beta=5, samples=2), "needs samples ≥ 3"),
    (dict(beta=5, samples=1), "samples ≥ 2"),
    (dict(beta=5, baseline="batch", prompts=1), "prompts ≥ 2"),
    (dict(baseline="mean"), "baseline must be"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kwargs)


def test_beta_warmup():
    cfg = DistillConfig(beta=15, beta_warmup=10)
    assert cfg.beta_at(0) == 1.5 and cfg.beta_at(4) == 7.5 and cfg.beta_at(100) == 15


def test_kl_is_zero_for_the_unguided_teacher_itself(base):
    d = Distiller(base, DistillConfig(guidance=1.0, samples=2, seconds=0.2))
    loss, metrics = d.step_loss(PROMPTS, 0, torch.Generator().manual_seed(0))
    assert abs(metrics["kl"]) < 1e-4


def test_a_step_lowers_the_kl_on_its_batch(base):
    d = Distiller(base, DistillConfig(guidance=3.0, samples=2, seconds=0.2))
    with torch.no_grad():  # move the student away from the teacher
        d.student.flat.add_(0.05 * torch.randn(d.student.flat.shape, generator=torch.Generator().manual_seed(0)))
    codes = d.sample(PROMPTS, torch.Generator().manual_seed(0))
    loss, metrics = d.loss_on(codes, PROMPTS, 0)
    assert metrics["kl"] > 0.1
    opt = torch.optim.SGD(d.student_model.parameters(), lr=0.01)
    loss.backward()
    opt.step()
    assert d.loss_on(codes, PROMPTS, 1)[1]["kl"] < metrics["kl"]
    # the sampler sees the trained weights (they share the flat buffer)
    assert torch.equal(d.student.flat, torch.cat([p.detach().reshape(-1) for p in d.student_model.parameters()]))
    assert not torch.equal(d.student.flat, d.teacher.flat)


def test_diversity_term(base):
    with pytest.raises(ValueError, match="needs a diversity embedding"):
        Distiller(base, DistillConfig(beta=5))
    d = Distiller(base, DistillConfig(beta=5, beta_warmup=0, samples=3, seconds=0.2), spectral_embedder)
    loss, metrics = d.step_loss(PROMPTS, 0, torch.Generator().manual_seed(1))
    loss.backward()
    grads = [p.grad for p in d.student_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert metrics["beta"] == 5 and metrics["advantage_std"] > 0 and metrics["reward_mean"] > 0
    assert metrics["log_prob"] < 0 and metrics["entropy"] > 0


def test_cli_trains_resumes_exactly_and_exports(tmp_path):
    import csv

    from engine.checkpoint import read_safetensors
    from training import distill

    tiny = ["--base", "debug", "--prompts", "2", "--samples", "2", "--seconds", "0.1", "--save-every", "1",
            "--eval-every", "2"]
    distill.main(tiny + ["--out", str(tmp_path / "a"), "--steps", "3"])
    distill.main(tiny + ["--out", str(tmp_path / "b"), "--steps", "2"])
    distill.main(tiny + ["--out", str(tmp_path / "b"), "--steps", "3"])
    rows = [list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("a", "b")]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]] and len(rows[0]) == 3
    assert rows[0][1]["heldout_kl"] != ""
    distill.main(["--out", str(tmp_path / "a"), "--export", str(tmp_path / "theta_q")])
    exported = read_safetensors(tmp_path / "theta_q" / "decoder.safetensors")
    assert all(t.dtype == torch.float16 for t in exported.values())
