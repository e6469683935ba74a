"""The benchmark script runs (on the tiny model): it must not rot. Timings are not asserted here."""
import json

import torch

import bench.decode_kernels
import bench.matmul
import engine.decoder
import training.bench_distill
import training.grad_snr
import training.scorer_metrics
from bench.engine import bench_merge, bench_sampler
from engine.decoder import _onednn_linear, linear
from engine.model import debug_composite, from_composite


def test_bench_functions_run(composite):
    comp, tokenizer, model = composite
    row = bench_sampler(comp, tokenizer, model, batch=2, frames=4, repeats=1)
    assert row["plain_speedup"] > 0 and row["cfg_speedup"] > 0 and row["cfg_cost_ours"] > 0
    assert not hasattr(comp.audio_encoder, "decode") or "decode" not in vars(comp.audio_encoder)  # stub removed
    m = bench_merge(model, repeats=1)
    assert m["decoder_params"] == model.decoder.flat.numel() and m["merge_over_bound"] > 0


def test_bench_runs_in_bf16():
    """--dtype bf16: our bf16-weight decoder against transformers' composite in bf16, and the bf16 merge."""
    comp, tokenizer = debug_composite(seed=0)
    model = from_composite(comp, tokenizer, "bf16", torch.bfloat16)
    comp.to(torch.bfloat16)
    row = bench_sampler(comp, tokenizer, model, batch=2, frames=4, repeats=1)
    assert row["plain_speedup"] > 0 and row["cfg_speedup"] > 0
    assert bench_merge(model, repeats=1)["decoder_MB"] * 1e6 == model.decoder.flat.numel() * 2


def test_bench_merge_leaves_the_model_unchanged(model):
    before = model.decoder.flat.clone()
    bench_merge(model, repeats=1)
    assert torch.equal(model.decoder.flat, before)


def test_distill_bench_runs(tiny_scorer_dirs):
    """training.bench_distill on the nano weights with a tiny E: every phase is timed."""
    r = training.bench_distill.main(["--embedding", str(tiny_scorer_dirs[0]), "--prompts", "2", "--samples", "3",
                                     "--seconds", "0.5", "--steps", "1"])
    assert set(r["share"]) == {"sample", "decode", "embed", "fwd_bwd"} and abs(sum(r["share"].values()) - 1) < 1e-6
    assert r["step_s"] > 0 and torch.get_num_threads() == r["threads"]


def test_scorer_metrics_runs(tmp_path, tiny_scorer_dirs):
    """training.scorer_metrics end to end with tiny scorers: every acceptance figure is produced."""
    training.scorer_metrics.main(["--embedding", str(tiny_scorer_dirs[0]), "--quality", str(tiny_scorer_dirs[1]),
                                  "--candidates", "20", "--retrieval-pieces", "50", "--pairs", "40", "--heldout", "60",
                                  "--prompts", "2", "--distractors", "3", "--out", str(tmp_path / "m.json")])
    m = json.loads((tmp_path / "m.json").read_text())
    r = m["retrieval_top1"]
    assert sorted(r) == ["20", "40", "50"] and [r[k]["groups"] for k in ("20", "40", "50")] == [2, 1, 1]
    assert all(0 <= x["value"] <= 1 for x in r.values()) and r["20"]["sem"] is not None and r["50"]["sem"] is None
    assert {"drums added", "gain +6 dB", "generations, two different prompts (upper bound)"} <= set(m["diversity"])
    assert 0 <= m["quality"]["quality_auc"] <= 1 and m["score_8_clips_8s_s"] > 0


def test_grad_snr_runs_and_separates_the_terms(tmp_path, tiny_scorer_dirs):
    """training.grad_snr on nano with a tiny E: both terms' gradients, cosines in [-1, 1]; a batch with itself
    would give cosine 1, independent batches give less."""
    g = torch.randn(100)
    cosine = training.grad_snr.mean_pairwise_cosine
    assert cosine([g, g.clone()]) > 0.999 and abs(cosine([g, -g])) > 0.999
    r = training.grad_snr.main(["--embedding", str(tiny_scorer_dirs[0]), "--prompts", "2", "--samples", "3",
                                "--seconds", "0.3", "--batches", "2", "--out", str(tmp_path / "snr.json")])
    assert json.loads((tmp_path / "snr.json").read_text()) == r
    for term in ("kl", "reinforce"):
        assert r[term]["norm"] > 0 and -1 <= r[term]["cosine"] <= 1


def test_matmul_bench_kernels_agree():
    """bench.matmul's kernels compute the same product (its timings are not asserted)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g)
    for rows in (1, 3, 8, 16, 40, 64):
        x = torch.randn(rows, 32, generator=g)
        ref = torch.nn.functional.linear(x, w)
        torch.testing.assert_close(bench.matmul.blocks_of_4(x, w)[:, :rows].T, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(x, w, 4), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(x, w, 0, True), ref, rtol=1e-5, atol=1e-5)
        if _onednn_linear() is not None:
            torch.testing.assert_close(_onednn_linear()(x, w), ref, rtol=1e-5, atol=1e-5)


def test_decode_kernel_ab_runs_and_restores_the_decoder(capsys):
    shipped = engine.decoder.linear, engine.decoder.decode_attention, engine.decoder.few_row_linear
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 24, generator=g)
    for rows in (1, 5, 16, 17):
        x = torch.randn(rows, 1, 24, generator=g)
        torch.testing.assert_close(bench.decode_kernels.blocks_of_4(x, w, 4), torch.nn.functional.linear(x, w),
                                   rtol=1e-5, atol=1e-5)
    bench.decode_kernels.main(["--sizes", "nano", "--repeats", "1", "--nano-frames", "2"])
    out = capsys.readouterr().out
    assert (engine.decoder.linear, engine.decoder.decode_attention, engine.decoder.few_row_linear) == shipped
    assert all(name in out for name in ("4-row blocks", "torch SDPA", "torch matmuls"))


def test_dtype_bench_runs_and_orders_the_errors():
    """bench.dtypes on the nano shape: every dtype timed; fp32 has no error against itself, int8 more than bf16."""
    import argparse  # noqa: PLC0415

    import bench.dtypes  # noqa: PLC0415
    import engine.kernels  # noqa: PLC0415

    if not engine.kernels.has_few_row_linear():
        return  # int8 needs the C kernel (bench.dtypes says so and stops)
    row = bench.dtypes.shapes(argparse.Namespace(sizes=["nano"], frames=4, repeats=1))["nano"]
    assert set(row["s_per_audio_s"]) == {"fp32", "bf16", "int8"} and row["int8_over_bf16"] > 0
    errors = {name: e["rms_rel"] for name, e in row["logits"].items()}
    assert errors["fp32"] == 0 and 0 < errors["bf16"] < errors["int8"] < 0.05


def test_batching_bench_runs_and_every_user_gets_the_same_codes_both_ways():
    import bench.batching  # noqa: PLC0415
    import engine.kernels  # noqa: PLC0415
    from engine.model import build_debug_model  # noqa: PLC0415
    from engine.service import MusicService  # noqa: PLC0415

    if not engine.kernels.has_few_row_linear():
        return  # fusing needs the C kernel (bench.batching says so and stops)
    service = MusicService(build_debug_model(seed=0))
    for name in ("q", "d"):
        service.mixer.add(name, service.base.flat)
    row = bench.batching.measure(service, users=3, takes=2, seconds=0.3, repeats=1)
    assert row["same_codes"] and row["throughput_ratio"] > 0 and row["fused_audio_s_per_s"] > 0


def test_results_are_written_as_valid_json_with_nan_as_null(tmp_path, capsys):
    from bench import write_json  # noqa: PLC0415

    path = write_json({"mean": float("nan"), "rows": [{"ci": float("nan"), "n": 1}]}, tmp_path / "x" / "r.json")
    assert json.loads(path.read_text()) == {"mean": None, "rows": [{"ci": None, "n": 1}]}
    assert f"wrote {path}" in capsys.readouterr().out


def test_first_audio_bench_times_the_first_chunk_of_a_stopped_and_of_a_finished_request():
    from bench.first_audio import measure  # noqa: PLC0415
    from tests.conftest import debug_service  # noqa: PLC0415

    service = debug_service()
    stopped = measure(service, "debug", "fp32", 2, 1, stop_after=True, seconds=2.0)
    finished = measure(service, "debug", "fp32", 2, 1, stop_after=False, seconds=2.0)
    assert 0 < stopped["first_audio_s"] and "request_s" not in stopped
    assert 0 < finished["first_audio_s"] < finished["request_s"]
