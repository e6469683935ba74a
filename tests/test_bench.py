"""The benchmark script runs (on the tiny model): it must not rot. Timings are not asserted here."""
from bench.engine import bench_merge, bench_sampler


def test_bench_functions_run(composite):
    comp, tokenizer, model = composite
    row = bench_sampler(comp, tokenizer, model, batch=2, frames=4, repeats=1)
    assert row["plain_speedup"] > 0 and row["cfg_speedup"] > 0 and row["cfg_cost_ours"] > 0
    assert not hasattr(comp.audio_encoder, "decode") or "decode" not in vars(comp.audio_encoder)  # stub removed
    m = bench_merge(model, repeats=1)
    assert m["decoder_params"] == model.decoder.flat.numel() and m["merge_over_bound"] > 0


def test_bench_merge_leaves_the_model_unchanged(model):
    import torch

    before = model.decoder.flat.clone()
    bench_merge(model, repeats=1)
    assert torch.equal(model.decoder.flat, before)
