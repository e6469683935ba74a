"""One step of diversity-rewarded CFG distillation on the tiny random model."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.checkpoint import read_safetensors
from engine.exact import event_distances
from engine.model import build_debug_model
from engine.score_codec import ScoreCodec
from training import distill, eval_snapshots, export
from training.distill import DistillConfig, Distiller
from training.heldout import HeldoutResult

PROMPTS = ["rock song", "calm piano"]


def spectral_embedder(audio, sample_rate):
    """A simple fixed audio embedding for tests: log band energies of the spectrum."""
    spec = torch.fft.rfft(audio, dim=-1).abs() ** 2
    bands = torch.stack([b.mean(-1) for b in spec.chunk(16, dim=-1)], dim=-1)
    return torch.log(bands + 1e-8)


@pytest.fixture(scope="module")
def base():
    model = build_debug_model(seed=0)
    model.codec = ScoreCodec()  # the random EnCodec sounds nearly alike for any codes; this one does not
    return model


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=-1), "beta must be ≥ 0"),
    (dict(guidance=0.5), "guidance γ must be ≥ 1"),
    (dict(temperature=0), "temperature must be > 0"),
    (dict(beta=5, samples=2), "needs samples ≥ 3"),
    (dict(beta=5, samples=1), "samples ≥ 2"),
    (dict(beta=5, baseline="batch", prompts=1), "prompts ≥ 2"),
    (dict(baseline="mean"), "baseline must be"),
    (dict(reward="clap"), "unknown reward .clap."),
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


def test_the_events_reward_reads_the_notes_and_needs_no_embedding(base):
    d = Distiller(base, DistillConfig(beta=5, beta_warmup=0, samples=3, seconds=0.2, reward="events"))
    codes = d.sample(PROMPTS, torch.Generator().manual_seed(1))
    loss, metrics = d.loss_on(codes, PROMPTS, 0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in d.student_model.parameters() if p.grad is not None)
    groups = codes.view(2, 3, *codes.shape[1:]).numpy()
    per_sample = [event_distances(g).sum(-1) / 2 for g in groups]  # each clip's mean distance to the other two
    assert metrics["reward_mean"] == pytest.approx(float(np.mean(per_sample)), abs=1e-6)
    assert metrics["reward_mean"] > 0 and d.take_timings() == dict(decode_s=0.0, embed_s=0.0)  # no audio made
    with pytest.raises(ValueError, match="only nano's score codec"):
        Distiller(build_debug_model(seed=0), DistillConfig(beta=5, reward="events"))


@pytest.fixture(scope="module")
def tiny_scorers(tiny_scorer_dirs):
    return tuple(str(p) for p in tiny_scorer_dirs)


def tiny_args(tiny_scorers, *extra):
    return ["--base", "debug", "--embedding", tiny_scorers[0], "--quality", tiny_scorers[1], "--prompts", "2",
            "--samples", "3", "--seconds", "0.1", "--save-every", "1", "--eval-every", "2", "--eval-prompts", "2",
            "--eval-samples", "2", "--beta-warmup", "2", "--snapshot-every", "2", *extra]


def test_cli_trains_resumes_exactly_and_exports(tmp_path, tiny_scorers):
    tiny = tiny_args(tiny_scorers, "--beta", "5")
    distill.main(tiny + ["--out", str(tmp_path / "a"), "--steps", "3"])
    distill.main(tiny + ["--out", str(tmp_path / "b"), "--steps", "2"])
    distill.main(tiny + ["--out", str(tmp_path / "b"), "--steps", "3"])
    rows = [list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("a", "b")]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]] and len(rows[0]) == 3
    # the debug model's EnCodec has random codebooks (engine.model.randomise_codebooks): its clips differ a little,
    # so the rewards are small but positive; the columns must be filled
    assert all(float(r["reward_mean"]) > 0 and float(r["embed_s"]) > 0 and r["fwd_bwd_s"] for r in rows[0])
    evals = list(csv.DictReader(open(tmp_path / "a" / "eval.csv")))
    assert [(e["step"], e["model"]) for e in evals] == [("0", "base"), ("0", "base + CFG γ=3"), ("2", "student"),
                                                       ("3", "student")]
    assert all(e["quality"] and e["diversity"] and e["vendi"] for e in evals)
    assert evals[0]["heldout_kl"] and not evals[1]["heldout_kl"]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "a" / "tb").iterdir())
    assert [p.name for p in (tmp_path / "a" / "snapshots").iterdir()] == ["step_000002.safetensors"]
    # re-evaluation after the fact: the references at step 0, then every snapshot
    eval_snapshots.main(["--run", str(tmp_path / "a"), "--embedding", tiny_scorers[0], "--quality", tiny_scorers[1]])
    again = list(csv.DictReader(open(tmp_path / "a" / "eval.csv")))
    assert [(e["step"], e["model"]) for e in again] == [("0", "base"), ("0", "base + CFG γ=3"), ("2", "student")]
    assert again[0]["quality"] == evals[0]["quality"] and again[0]["heldout_kl"] == evals[0]["heldout_kl"]
    # snapshots are fp16: the same model up to rounding
    assert float(again[2]["heldout_kl"]) == pytest.approx(float(evals[2]["heldout_kl"]), rel=0.05)
    export.main(["distill", str(tmp_path / "a"), str(tmp_path / "theta_q")])
    exported = read_safetensors(tmp_path / "theta_q" / "decoder.safetensors")
    assert all(t.dtype == torch.float16 for t in exported.values())


def test_cli_can_start_the_student_from_other_weights(tmp_path, tiny_scorers):
    tiny = tiny_args(tiny_scorers)
    distill.main(tiny + ["--out", str(tmp_path / "q"), "--steps", "2", "--eval-every", "0"])
    export.main(["distill", str(tmp_path / "q"), str(tmp_path / "theta_q")])
    distill.main(tiny + ["--out", str(tmp_path / "d"), "--init", str(tmp_path / "theta_q"), "--steps", "1",
                         "--lr", "1e-12", "--eval-every", "1"])
    start = read_safetensors(tmp_path / "theta_q" / "decoder.safetensors")
    after = read_safetensors(tmp_path / "d" / "decoder.safetensors")
    assert all(torch.allclose(after[k].float(), start[k].float(), atol=1e-3) for k in start)  # lr ~0: still θ_q
    evals = list(csv.DictReader(open(tmp_path / "d" / "eval.csv")))
    assert [(e["step"], e["model"]) for e in evals] == [("0", "base"), ("0", "base + CFG γ=3"), ("0", "student"),
                                                       ("1", "student")]
    # the held-out KL belongs to the student, not to the base it no longer is
    assert not evals[0]["heldout_kl"] and not evals[1]["heldout_kl"] and evals[2]["heldout_kl"]
    # re-evaluation after the fact starts from the --init weights too (config.json), not from the base
    eval_snapshots.main(["--run", str(tmp_path / "d"), "--embedding", tiny_scorers[0], "--quality", tiny_scorers[1]])
    again = list(csv.DictReader(open(tmp_path / "d" / "eval.csv")))
    assert [(e["step"], e["model"]) for e in again] == [("0", "base"), ("0", "base + CFG γ=3"), ("0", "student")]
    assert again[2]["heldout_kl"] == evals[2]["heldout_kl"] and again[2]["quality"] == evals[2]["quality"]
    with pytest.raises(Exception, match="nowhere"):
        distill.main(tiny + ["--out", str(tmp_path / "e"), "--init", str(tmp_path / "nowhere"), "--steps", "1"])


def test_cli_accumulates_micro_batches_and_resumes_exactly(tmp_path, tiny_scorers):
    tiny = tiny_args(tiny_scorers, "--beta", "5", "--accumulate", "2", "--eval-every", "0")
    distill.main(tiny + ["--out", str(tmp_path / "a"), "--steps", "2"])
    distill.main(tiny + ["--out", str(tmp_path / "b"), "--steps", "1"])
    with open(tmp_path / "b" / "log.csv", "a") as f:  # a step logged after the last checkpoint, then a crash
        f.write("2,999\r\n")
    distill.main(tiny + ["--out", str(tmp_path / "b"), "--steps", "2"])
    rows = [list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("a", "b")]
    assert len(rows[0]) == 2 and [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]  # the stray row is gone
    # one optimizer step = 2 micro-batches: not the same draw as a single-batch step
    distill.main(tiny_args(tiny_scorers, "--beta", "5", "--eval-every", "0") +
                 ["--out", str(tmp_path / "c"), "--steps", "1"])
    single = list(csv.DictReader(open(tmp_path / "c" / "log.csv")))
    assert single[0]["loss"] != rows[0][0]["loss"]
    with pytest.raises(SystemExit, match="accumulate must be ≥ 1"):
        distill.main(tiny_args(tiny_scorers, "--accumulate", "0") + ["--out", str(tmp_path / "d"), "--steps", "1"])


def test_cli_refuses_beta_without_embedding(tmp_path):
    with pytest.raises(SystemExit, match="needs --embedding"):
        distill.main(["--base", "debug", "--embedding", "", "--quality", "", "--beta", "5", "--out", str(tmp_path)])


def test_cli_stops_on_nan_and_keeps_the_last_good_checkpoint(tmp_path, tiny_scorers, monkeypatch):
    args = tiny_args(tiny_scorers) + ["--out", str(tmp_path / "run")]
    distill.main(args + ["--steps", "1"])
    good = read_safetensors(tmp_path / "run" / "decoder.safetensors")
    real = distill.Distiller.loss_on

    def poisoned(self, *a, **k):
        loss, metrics = real(self, *a, **k)
        return loss * float("nan"), metrics

    monkeypatch.setattr(distill.Distiller, "loss_on", poisoned)
    with pytest.raises(SystemExit):
        distill.main(args + ["--steps", "3"])
    after = read_safetensors(tmp_path / "run" / "decoder.safetensors")
    assert all(torch.equal(good[k], after[k]) for k in good)


@pytest.mark.slow  # two launcher processes importing torch: `make test-slow`
@pytest.mark.parametrize("launch, processes", [
    (["--cpu", "--num_processes", "2"], 1),  # accelerate 1.x starts one process for --cpu without MPI (accelerate#2741)
    (["--multi_gpu", "--num_processes", "2"], 2),  # torchrun: two real processes, gloo on a CPU-only machine
])
def test_smoke_run_under_accelerate_launch(tmp_path, tiny_scorers, launch, processes):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1",
           "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "training.distill", *tiny_args(tiny_scorers, "--beta", "5"), "--steps", "2",
           "--out", str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 2 and all(float(r["kl"]) > 0 for r in rows)
    assert f'"processes": {processes}' in (tmp_path / "run" / "config.json").read_text()


def test_a_masked_teacher_gives_a_finite_kl_and_its_name(base):
    d = Distiller(base, DistillConfig(guidance=5.0, plausibility=0.1, negative_prompt="", samples=2, seconds=0.2))
    loss, metrics = d.step_loss(PROMPTS, 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and metrics["kl"] >= 0
    assert distill.teacher_name(d.config) == "base + CFG γ=5 α=0.1 unconditional"
    with pytest.raises(ValueError, match="plausibility α must be in"):
        DistillConfig(plausibility=1.0)


def test_only_the_teacher_row_uses_the_mask(base, monkeypatch):
    seen = []
    monkeypatch.setattr(distill, "measure", lambda *a, **k: seen.append((k["guidance"], k["plausibility"]))
                        or HeldoutResult())
    d = Distiller(base, DistillConfig(guidance=5.0, plausibility=0.1, samples=2, seconds=0.2))
    distill.eval_rows(d, 0, PROMPTS, distill.HeldoutSettings(2, 2, 0.2, 0), None)
    assert seen == [(1.0, 0.0), (5.0, 0.1)]  # the base plainly, the teacher with its mask


def test_gradient_checkpointing_changes_memory_not_the_gradient(base):
    cfg = DistillConfig(guidance=3.0, samples=3, seconds=0.2, beta=5, beta_warmup=0)
    plain, checkpointed = Distiller(base, cfg, spectral_embedder), Distiller(base, cfg, spectral_embedder)
    checkpointed.enable_checkpointing()
    assert checkpointed.student_model.training and checkpointed.student_model.is_activation_checkpointing
    codes = plain.sample(PROMPTS, torch.Generator().manual_seed(2))
    grads = []
    for d in (plain, checkpointed):
        loss, _ = d.loss_on(codes, PROMPTS, 0)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in d.student_model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_keeps_the_loss_close_and_finite(base):
    cfg = DistillConfig(guidance=3.0, samples=2, seconds=0.2)
    d = Distiller(base, cfg)
    codes = d.sample(PROMPTS, torch.Generator().manual_seed(3))
    full = d.loss_on(codes, PROMPTS, 0)[0]
    d.autocast = torch.bfloat16
    half = d.loss_on(codes, PROMPTS, 0)[0]
    assert torch.isfinite(half) and abs(half.item() - full.item()) <= 0.1 * abs(full.item()) + 1e-3
    half.backward()
    assert all(torch.isfinite(p.grad).all() for p in d.student_model.parameters() if p.grad is not None)


def test_cli_takes_autocast_checkpointing_and_a_prompts_file(tmp_path, tiny_scorers):
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"train": ["a calm piano piece", "fast techno"], "heldout": ["sad jazz", "happy folk"]}')
    distill.main(tiny_args(tiny_scorers, "--beta", "5", "--autocast", "bf16", "--checkpointing", "--prompts-file",
                           str(prompts)) + ["--out", str(tmp_path / "run"), "--steps", "1"])
    assert (tmp_path / "run" / "decoder.safetensors").exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": []}')
    with pytest.raises(SystemExit, match="not a prompts file"):
        distill.main(tiny_args(tiny_scorers, "--prompts-file", str(bad)) + ["--out", str(tmp_path / "b"),
                                                                            "--steps", "1"])


class DistinctTokens:
    """A set-level reward written in this test module: each clip's share of the other clips of its prompt that
    differ from it somewhere (a stand-in for Vendi-like set scores)."""

    pairwise = False

    def __call__(self, codes):  # (P, N, K, T) -> (P, N)
        flat = codes.flatten(2)
        differs = (flat[:, :, None] != flat[:, None]).any(-1).float()  # (P, N, N), zero diagonal
        return differs.sum(-1) / (codes.shape[1] - 1)

    def take_timings(self):
        return {}


@pytest.fixture
def distinct_reward():
    from training import rewards  # noqa: PLC0415

    kind = rewards.register(rewards.RewardKind("distinct", "share of the other takes that differ (a test reward)",
                                               lambda model, embedder: DistinctTokens(), pairwise=False))
    yield kind
    rewards.unregister(kind.key)


def test_a_reward_registered_here_trains_through_the_objective_and_the_command(base, distinct_reward, tmp_path,
                                                                              tiny_scorers):
    """Adding a diversity reward is one registry entry: the objective and the trainer's command take it as is."""
    with pytest.raises(ValueError, match="pairwise"):  # a set-level reward has no leave-one-out baseline
        DistillConfig(beta=5, reward="distinct", baseline="loo")
    d = Distiller(base, DistillConfig(beta=5, beta_warmup=0, samples=3, seconds=0.2, reward="distinct",
                                      baseline="batch"))
    codes = d.sample(PROMPTS, torch.Generator().manual_seed(1))
    loss, metrics = d.loss_on(codes, PROMPTS, 0)
    loss.backward()
    assert metrics["reward_mean"] == pytest.approx(float(DistinctTokens()(codes.view(2, 3, *codes.shape[1:])).mean()))
    assert all(torch.isfinite(p.grad).all() for p in d.student_model.parameters() if p.grad is not None)
    distill.main(tiny_args(tiny_scorers, "--beta", "5", "--reward", "distinct", "--baseline", "batch",
                           "--eval-every", "0") + ["--out", str(tmp_path / "run"), "--steps", "1"])
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 1 and float(rows[0]["reward_mean"]) >= 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["reward"] == "distinct"
