"""Our sampler against transformers: same logits, same tokens, CFG exactly as the composite model does it."""
import threading

import pytest
import torch

import engine.decoder
import engine.generate
import engine.kernels
from engine.decoder import linear
from engine.generate import Continuation, GenerationCancelled, SamplingParams, generate_codes, generate_long
from engine.model import TextCondition, debug_composite, from_composite
from engine.sampling import apply_delay, cfg_logits

GREEDY = SamplingParams(temperature=0)


def _hf_logits(model, delayed, cond):
    N, K, _ = delayed.shape
    out = model.decoder.model(input_ids=delayed.reshape(N * K, -1), encoder_hidden_states=cond.hidden.expand(N, -1, -1),
                              encoder_attention_mask=cond.mask.expand(N, -1)).logits
    return out.view(N, K, -1, out.shape[-1])


def _random_delayed(model, N, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, model.decoder.vocab_size, (N, model.decoder.num_codebooks, T), generator=g)
    return apply_delay(codes, model.decoder.config.pad_token_id)[:, :, :-1]  # the columns fed to the model


@torch.no_grad()
def test_full_forward_matches_transformers(model):
    cond = model.encode_text(["rock song with drums"])
    delayed = _random_delayed(model, 2, 16)
    state = model.decoder.new_state(cond.hidden.expand(2, -1, -1), cond.mask.expand(2, -1), max_len=None)
    ours = model.decoder.forward(delayed, 0, state)
    torch.testing.assert_close(ours, _hf_logits(model, delayed, cond), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_cached_steps_and_chunks_match_full_forward(model):
    cond = model.encode_text(["calm piano"])
    delayed = _random_delayed(model, 3, 12, seed=1)
    h, m = cond.hidden.expand(3, -1, -1), cond.mask.expand(3, -1)
    full = model.decoder.forward(delayed, 0, model.decoder.new_state(h, m, None))
    L = delayed.shape[-1]
    state = model.decoder.new_state(h, m, max_len=L)
    stepwise = torch.cat([model.decoder.forward(delayed[:, :, i:i + 1], i, state) for i in range(L)], dim=2)
    torch.testing.assert_close(stepwise, full, rtol=1e-5, atol=1e-5)
    state = model.decoder.new_state(h, m, max_len=L)  # prefix of 5, then a chunk of the rest
    chunks = torch.cat([model.decoder.forward(delayed[:, :, :5], 0, state),
                        model.decoder.forward(delayed[:, :, 5:], 5, state)], 2)
    torch.testing.assert_close(chunks, full, rtol=1e-5, atol=1e-5)


def _composite_codes(composite, prompt, N, T, **kwargs):
    """Codes from transformers' own MusicgenForConditionalGeneration.generate (captured at the codec)."""
    comp, tokenizer, model = composite
    captured = {}
    decode = comp.audio_encoder.decode

    def spy(codes, **kw):
        captured["codes"] = codes[0]
        return decode(codes, **kw)

    enc = tokenizer([prompt] * N, return_tensors="pt")
    enc.pop("token_type_ids", None)
    comp.audio_encoder.decode = spy
    try:
        with torch.no_grad():
            comp.generate(**enc, max_new_tokens=T + model.decoder.num_codebooks - 1, **kwargs)
    finally:
        del comp.audio_encoder.decode
    return captured["codes"]


def test_greedy_tokens_match_transformers_generate(composite):
    model = composite[2]
    prompt, N, T = "80s pop track with bassy drums and synth", 2, 24
    ours = generate_codes(model.decoder, model.encode_text([prompt]), N, T, GREEDY, None).codes
    assert torch.equal(ours, _composite_codes(composite, prompt, N, T, do_sample=False))


def test_cfg_matches_transformers_generate_with_guidance(composite):
    """transformers' CFG uses the null condition as the negative branch: our empty negative prompt."""
    model = composite[2]
    prompt, N, T = "a jazz trio", 2, 20
    cond, null = model.encode_text([prompt]), model.encode_text([""])
    ours = generate_codes(model.decoder, cond, N, T, GREEDY, None, neg=null, guidance=3.0).codes
    assert torch.equal(ours, _composite_codes(composite, prompt, N, T, do_sample=False, guidance_scale=3.0))


def test_cfg_with_gamma_one_equals_no_cfg(model):
    cond, neg = model.encode_text(["techno"]), model.encode_text(["Bad audio quality."])
    plain = generate_codes(model.decoder, cond, 3, 20, GREEDY, None).codes
    cfg1 = generate_codes(model.decoder, cond, 3, 20, GREEDY, None, neg=neg, guidance=1.0).codes
    assert torch.equal(plain, cfg1)


def _sampled_logits(monkeypatch, *args, **kwargs):
    """Run generate_codes and return the logits handed to the sampler at each step, (steps, N*K, V)."""

    seen = []
    real = engine.generate.sample_next_token

    def spy(logits, *a, **kw):
        seen.append(logits.clone())
        return real(logits, *a, **kw)

    monkeypatch.setattr(engine.generate, "sample_next_token", spy)
    generate_codes(*args, **kwargs)
    monkeypatch.undo()
    return torch.stack(seen)


@torch.no_grad()
def test_cfg_combines_the_two_branches(model, monkeypatch):
    """What the sampler sees is γ·z(prompt) + (1−γ)·z(negative), each branch from its own forward."""
    cond, neg = model.encode_text(["reggae"]), model.encode_text(["Bad audio quality."])
    dec = model.decoder
    bos = torch.full((1, dec.num_codebooks, 1), dec.config.pad_token_id)
    z_c = dec.forward(bos, 0, dec.new_state(cond.hidden, cond.mask, 1))[0, :, -1]  # (K, V)
    z_n = dec.forward(bos, 0, dec.new_state(neg.hidden, neg.mask, 1))[0, :, -1]
    seen = _sampled_logits(monkeypatch, dec, cond, 1, 8, GREEDY, None, neg=neg, guidance=3.0)
    torch.testing.assert_close(seen[0], cfg_logits(z_c, z_n, 3.0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(z_c, z_n)


def test_negative_prompt_is_used(model, monkeypatch):
    cond = model.encode_text(["hip hop beat"])
    run = lambda neg: _sampled_logits(monkeypatch, model.decoder, cond, 2, 10, GREEDY, None,
                                      neg=model.encode_text([neg]), guidance=3.0)
    assert torch.equal(run("Bad audio quality."), run("Bad audio quality."))
    assert not torch.allclose(run("Bad audio quality."), run("low quality, noisy recording"))
    assert not torch.allclose(run("Bad audio quality."), run(""))


def test_seeded_sampling_is_reproducible(model):
    cond = model.encode_text(["bossa nova"])
    run = lambda seed: generate_codes(model.decoder, cond, 4, 20, SamplingParams(),
                                      torch.Generator().manual_seed(seed)).codes
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # the clips of one request differ from each other


def test_step_count_and_progress(model):
    calls = []
    out = generate_codes(model.decoder, model.encode_text(["x"]), 1, 10, SamplingParams(),
                         torch.Generator().manual_seed(0),
                         progress=lambda i, n: calls.append((i, n)))
    K = model.decoder.num_codebooks
    assert out.codes.shape == (1, K, 10)
    assert len(out.step_times_s) == 10 + K - 1  # prefill + one forward per further column
    assert calls[-1] == (10 + K - 1, 10 + K - 1)


def test_cancel(model):
    ev = threading.Event()
    ev.set()
    with pytest.raises(GenerationCancelled):
        generate_codes(model.decoder, model.encode_text(["x"]), 1, 10, SamplingParams(), None, cancel=ev)


def test_unconditional_rows_ignore_text(model):
    """An all-masked condition (the empty prompt) gives the same result whatever its padding width."""
    null = model.encode_text([""])
    wide = TextCondition(torch.zeros(1, 9, null.hidden.shape[-1]), torch.zeros(1, 9, dtype=torch.long), [False])
    a = generate_codes(model.decoder, null, 1, 12, GREEDY, None).codes
    b = generate_codes(model.decoder, wide, 1, 12, GREEDY, None).codes
    assert torch.equal(a, b)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 13, 16, 17, 40])
def test_blocked_linear_equals_f_linear(rows, monkeypatch):
    """One padded block up to 4 rows, oneDNN in chunks of 8 beyond, F.linear where oneDNN is missing: all equal."""

    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 1, 48, generator=g), torch.randn(96, 48, generator=g)
    strided = torch.randn(rows, 1, 96, generator=g)[..., ::2]  # a non-contiguous input
    for block in (0, 4):
        for inp in (x, strided):
            y = linear(inp, w, block)
            assert y.shape == (rows, 1, 96) and y.is_contiguous()
            torch.testing.assert_close(y, torch.nn.functional.linear(inp, w), rtol=1e-5, atol=1e-5)
    if rows > 4:
        assert engine.decoder._onednn_linear() is not None  # this torch has it: the chunked path ran above
        wg = w.clone().requires_grad_()
        linear(x, wg, 4).sum().backward()  # with autograd it falls back to F.linear, which has a gradient
        torch.testing.assert_close(wg.grad, x.reshape(rows, -1).sum(0).expand(96, -1), rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(engine.decoder, "_onednn_linear", lambda: None)
        torch.testing.assert_close(linear(x, w, 4), torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def bf16_pair():
    """The debug model twice: bf16 weights, and fp32 weights equal to those bf16 values."""

    comp, tokenizer = debug_composite(seed=0)
    low = from_composite(comp, tokenizer, "bf16", dtype=torch.bfloat16)
    comp, tokenizer = debug_composite(seed=0)
    ref = from_composite(comp.to(torch.bfloat16).float(), tokenizer, "ref")
    return low, ref


@torch.no_grad()
def test_bf16_weights_on_cpu_compute_in_fp32(bf16_pair):
    """bf16 weights on a CPU: matmuls in bf16, everything else (cache, attention, logits) fp32; the logits stay
    within bf16 rounding of the fp32 forward over the same weight values, cached or not."""
    low, ref = bf16_pair
    assert low.decoder.dtype == torch.bfloat16 and low.decoder.compute_dtype == torch.float32
    # no fp32 torch few-row paths on bf16 weights; the C kernel takes bf16 weights (fp32 arithmetic) where it runs
    assert low.decoder.matmul == (0, engine.kernels.has_few_row_linear())
    cond = low.encode_text(["rock song with drums"])
    delayed = _random_delayed(low, 2, 10)
    L = delayed.shape[-1]
    h, m = cond.hidden.expand(2, -1, -1), cond.mask.expand(2, -1)
    expected = ref.decoder.forward(delayed, 0, ref.decoder.new_state(h, m, None))
    state = low.decoder.new_state(h, m, max_len=L)
    assert state.k.dtype == torch.float32 and state.cross_k[0].dtype == torch.float32
    full = low.decoder.forward(delayed, 0, low.decoder.new_state(h, m, None))
    stepwise = torch.cat([low.decoder.forward(delayed[:, :, i:i + 1], i, state) for i in range(L)], dim=2)
    assert full.dtype == stepwise.dtype == torch.float32
    scale = expected.abs().max().item()
    for ours in (full, stepwise):
        error = (ours - expected).abs().max().item()
        assert 0 < error < 0.015 * scale, error  # bf16 activations into the matmuls: not exact, but close


def test_bf16_sampling_is_seeded_and_follows_the_condition(bf16_pair):
    low, _ = bf16_pair
    cond, neg = low.encode_text(["calm piano"]), low.encode_text([""])
    params = SamplingParams(temperature=1.0, top_k=50)

    def run(seed, **kw):
        return generate_codes(low.decoder, cond, 2, 16, params, torch.Generator().manual_seed(seed), **kw).codes

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    cfg = run(0, neg=neg, guidance=3.0)
    assert cfg.shape == (2, low.decoder.num_codebooks, 16) and torch.equal(cfg, run(0, neg=neg, guidance=3.0))


def test_a_prefix_is_kept_and_its_columns_prefilled_in_one_chunk(model):
    """A continuation starts with the prefix's frames (the delay pattern's staggered columns included) and samples
    only after them; a prefix as long as the clip is refused."""
    cond, gen = model.encode_text(["bossa nova"]), torch.Generator().manual_seed(1)
    start = generate_codes(model.decoder, cond, 1, 12, SamplingParams(), gen).codes
    out = generate_codes(model.decoder, cond, 3, 30, SamplingParams(), torch.Generator().manual_seed(2), prefix=start)
    K = model.decoder.num_codebooks
    assert out.codes.shape == (3, K, 30) and torch.equal(out.codes[:, :, :12], start.expand(3, -1, -1))
    assert not torch.equal(out.codes[0], out.codes[1])  # three different endings
    # one forward for BOS and the 12 prefix columns, then one per further column but the last (L = 30 + K columns)
    assert len(out.step_times_s) == 1 + (30 + K - 1 - 13)
    with pytest.raises(ValueError, match="nothing to generate"):
        generate_codes(model.decoder, cond, 1, 12, SamplingParams(), gen, prefix=start)


def test_a_long_take_starts_with_the_plain_take_and_continues_window_by_window(model):
    cond, window = model.encode_text(["bossa nova"]), 20
    plain = generate_codes(model.decoder, cond, 2, window, SamplingParams(), torch.Generator().manual_seed(3)).codes
    steps, seen = Continuation(window, 8), []
    long = generate_long(model.decoder, cond, 2, 45, SamplingParams(), torch.Generator().manual_seed(3), steps,
                         progress=lambda i, n: seen.append((i, n))).codes
    assert long.shape[-1] == 45 and torch.equal(long[:, :, :window], plain)  # the same seed: the same first window
    assert seen[-1] == (45, 45) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    again = generate_long(model.decoder, cond, 2, 45, SamplingParams(), torch.Generator().manual_seed(3), steps).codes
    assert torch.equal(long, again)  # the seed decides every window
    with pytest.raises(ValueError, match="stride"):
        Continuation(20, 20)


def test_with_bars_each_clip_continues_from_one_of_its_bar_lines(model, monkeypatch):
    """Where the model's grid is counted from the first frame (nano), the context of each clip starts on its own bar
    line, at most window − stride frames back."""
    cond, contexts = model.encode_text(["bossa nova"]), []
    real = engine.generate.generate_codes

    def spy(*args, prefix=None, **kwargs):
        if prefix is not None:
            contexts.append(prefix.shape[-1])
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(engine.generate, "generate_codes", spy)
    bars = iter([6, 7] * 10)  # clip 0 has bars of 6 frames, clip 1 of 7
    steps = Continuation(20, 10, bar=lambda clip: next(bars))
    out = generate_long(model.decoder, cond, 2, 30, SamplingParams(), torch.Generator().manual_seed(4), steps).codes
    assert out.shape == (2, model.decoder.num_codebooks, 30)
    assert contexts == [20 - 12, 20 - 14]  # contexts from frame 12 (2 bars of 6) and 14 (2 bars of 7): ≤ 10 back
    contexts.clear()
    same = Continuation(20, 10, bar=lambda clip: 6)  # clips with one tempo continue together, in one batch
    generate_long(model.decoder, cond, 2, 30, SamplingParams(), torch.Generator().manual_seed(4), same)
    assert contexts == [20 - 12]
