"""The C kernels against torch (SDPA, F.linear), their fallbacks, and the sampler with and without them."""
import os

import pytest
import torch
import torch.nn.functional as F

import engine.kernels as kernels
from engine.decoder import _position_major
from engine.generate import SamplingParams, generate_codes

built = pytest.mark.skipif(kernels.load() is None, reason=f"kernels not built here: {kernels.status()}")


def _case(B, H, T, D, max_len=None, seed=0):
    """q (B, H, 1, D) heads-adjacent; position-major caches holding T-1 positions; the new k/v; a padding mask."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, 1, 3 * H * D, generator=g)
    new_k, new_v, q = (x.view(B, 1, H, D).transpose(1, 2) for x in qkv.chunk(3, dim=-1))
    max_len = max_len or T + 3
    kc = torch.randn(max_len, B, H, D, generator=g).permute(1, 2, 0, 3)
    vc = torch.randn(max_len, B, H, D, generator=g).permute(1, 2, 0, 3)
    mask = torch.zeros(B, 1, 1, T)
    mask[0, ..., T // 2:] = torch.finfo(torch.float32).min  # row 0 sees only the first half
    return q, new_k, new_v, kc, vc, mask


@built
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 8), (3, 2, 5, 16), (16, 8, 130, 32), (2, 4, 37, 64), (2, 3, 9, 24)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_sdpa_and_writes_the_cache(B, H, T, D, threads):
    q, new_k, new_v, kc, vc, mask = _case(B, H, T, D)
    before = kc.clone()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = kernels.decode_attention(q, kc, vc, T, new_k=new_k, new_v=new_v, mask=mask)
    finally:
        torch.set_num_threads(old)
    assert out.shape == (B, 1, H * D)
    torch.testing.assert_close(kc[:, :, T - 1], new_k[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(vc[:, :, T - 1], new_v[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(kc[:, :, :T - 1], before[:, :, :T - 1], rtol=0, atol=0)  # nothing else written
    expected = F.scaled_dot_product_attention(q, kc[:, :, :T], vc[:, :, :T], attn_mask=mask)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(B, 1, H * D), rtol=1e-5, atol=1e-5)
    plain = kernels.decode_attention(q, kc, vc, T)  # no mask, nothing written
    expected = F.scaled_dot_product_attention(q, kc[:, :, :T], vc[:, :, :T])
    torch.testing.assert_close(plain, expected.transpose(1, 2).reshape(B, 1, H * D), rtol=1e-5, atol=1e-5)


def _with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


@built
def test_same_bits_for_any_thread_count():
    """Concurrent requests may get fewer threads: the same inputs must still give the same clips."""
    q, _, _, kc, vc, mask = _case(8, 4, 77, 32)
    outs = [_with_threads(n, lambda: kernels.decode_attention(q, kc, vc, 77, mask=mask)) for n in (1, 2, 3, 5)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    if kernels.has_few_row_linear():
        x, w = torch.randn(13, 64), torch.randn(96, 64)
        outs = [_with_threads(n, lambda: kernels.few_row_linear(x, w)) for n in (1, 2, 3)]
        assert all(torch.equal(outs[0], o) for o in outs[1:])


@built
def test_cross_attention_layout_from_the_decoder():
    """Cross-attention K/V as new_state lays them out (position-major views), a fully masked row included."""
    g = torch.Generator().manual_seed(3)
    B, H, S, D = 4, 2, 6, 16
    k, v = (_position_major(torch.randn(B, H, S, D, generator=g)) for _ in range(2))
    q = torch.randn(B, 1, H * D, generator=g).view(B, 1, H, D).transpose(1, 2)
    mask = torch.zeros(B, 1, 1, S)
    mask[1, ..., 2:] = torch.finfo(torch.float32).min
    mask[2] = torch.finfo(torch.float32).min  # SDPA then averages all positions; so must we
    out = kernels.decode_attention(q, k, v, S, mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, 1, H * D)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@built
def test_declines_what_it_does_not_handle():
    q, new_k, new_v, kc, vc, mask = _case(2, 2, 5, 8)
    assert kernels.decode_attention(q.bfloat16(), kc.bfloat16(), vc.bfloat16(), 5) is None
    assert kernels.decode_attention(q, kc.contiguous(), vc.contiguous(), 5) is None  # heads not adjacent
    assert kernels.decode_attention(q, kc, vc, 5, mask=mask[..., :4]) is None  # mask of the wrong length
    assert kernels.decode_attention(q, kc[:, :, :4], vc[:, :, :4], 5) is None  # cache shorter than the length
    with torch.enable_grad():
        assert kernels.decode_attention(q.clone().requires_grad_(), kc, vc, 5) is None


def _fresh(monkeypatch, **env):
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_status", "not built yet")
    monkeypatch.setattr(kernels, "_few_rows", False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_disabled_or_unbuildable_falls_back(monkeypatch, tmp_path):
    q, _, _, kc, vc, _ = _case(2, 2, 5, 8)
    _fresh(monkeypatch, MUSIC_CPU_KERNELS="0")
    assert kernels.decode_attention(q, kc, vc, 5) is None and "MUSIC_CPU_KERNELS=0" in kernels.status()
    _fresh(monkeypatch, MUSIC_CPU_KERNELS="1", PATH=str(tmp_path), CC="")
    assert kernels.load() is None and "no C compiler" in kernels.status()
    bad = tmp_path / "badcc"
    bad.write_text("#!/bin/sh\necho 'error: this compiler always fails' >&2\nexit 1\n")
    bad.chmod(0o755)
    _fresh(monkeypatch, CC=str(bad), MUSIC_KERNEL_CACHE=str(tmp_path / "cache"))
    assert kernels.load() is None and "always fails" in kernels.status()
    assert not [p for p in (tmp_path / "cache").iterdir()]  # no half-written library left behind


@built
def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
    _fresh(monkeypatch, MUSIC_KERNEL_CACHE=str(tmp_path))
    assert kernels.load() is not None
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].startswith("cpu_kernels-") and files[0].endswith(".so")
    _fresh(monkeypatch, MUSIC_KERNEL_CACHE=str(tmp_path))
    mtime = (tmp_path / files[0]).stat().st_mtime_ns
    assert kernels.load() is not None and (tmp_path / files[0]).stat().st_mtime_ns == mtime  # reused, not rebuilt


def _avx2_builds() -> bool:
    """Whether this machine can build and run the AVX2 + FMA variant (any x86-64 CPU with both)."""
    flags = next((ln for ln in kernels.first_cpu().splitlines() if ln.startswith("flags")), "").split()
    return kernels.load() is not None and {"avx2", "fma"} <= set(flags)


@pytest.fixture(params=["native", "avx2"])
def isa(request, monkeypatch):
    """Each few-row matmul test on this CPU's own build and on the AVX2 + FMA build (`MUSIC_KERNEL_ISA=avx2`), so the
    path most laptops take is tested on AVX-512 machines too."""
    if request.param == "avx2":
        if not _avx2_builds():
            pytest.skip("no AVX2 + FMA here")
        _fresh(monkeypatch, MUSIC_KERNEL_ISA="avx2")
        assert kernels.simd() == "AVX2 + FMA" and "AVX2 + FMA" in kernels.status()
    elif not kernels.has_few_row_linear():
        pytest.skip(f"no few-row matmul kernel: {kernels.status()}")
    return request.param


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 15, 16, 33, 48])
@pytest.mark.parametrize("n_out, n_in", [(8, 16), (40, 48), (768, 256), (256, 1024)])
def test_few_row_linear_matches_f_linear(rows, n_out, n_in, isa):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(n_out, n_in, generator=g)
    big = torch.randn(rows, n_in + 16, generator=g)
    x = big[:, 8:8 + n_in]  # rows at a stride larger than n_in
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            y = kernels.few_row_linear(x, w)
        finally:
            torch.set_num_threads(old)
        torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 5, 16])
def test_few_row_linear_bf16_weights_in_fp32_arithmetic(rows, isa):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(48, 64, generator=g).bfloat16()
    x = torch.randn(rows, 64, generator=g)
    y = kernels.few_row_linear(x, w)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x, w.float()), rtol=1e-5, atol=1e-4)  # exact widening, fp32 products
    torch.testing.assert_close(kernels.few_row_linear(x.bfloat16(), w), F.linear(x.bfloat16().float(), w.float()),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, 7, 48])
@pytest.mark.parametrize("n_out, n_in", [(8, 32), (40, 64), (256, 1024), (16, 8192)])
def test_few_row_linear_int8_weights_times_their_scales(rows, n_out, n_in, isa):
    """int8 weights times int16-rounded rows, summed in integers, each output times its row's and channel's scales:
    what the dequantised matrix gives, up to the rows' rounding (each x off by at most half its row's step,
    max |x| / 32767 / 2)."""
    g = torch.Generator().manual_seed(rows + n_out)
    q = torch.randint(-127, 128, (n_out, n_in), generator=g, dtype=torch.int8)
    scale = torch.rand(n_out, generator=g) / 100
    x = torch.randn(rows, n_in, generator=g) * torch.logspace(-3, 3, rows)[:, None]  # rows of very different sizes
    ref = F.linear(x, q.float() * scale[:, None])
    y = kernels.few_row_linear(x, q, scale)
    step = x.abs().amax(dim=1, keepdim=True) / 32767  # each row's own scale
    bound = 0.5 * step * (q.float().abs() * scale[:, None]).sum(dim=1) + 1e-5 * ref.abs()
    assert ((y - ref).abs() <= bound).all()
    q[:] = 127  # the largest sums an int8 row can make: no int32 overflow (sums are flushed every 2048 inputs)
    x = torch.full((rows, n_in), 3.0)
    torch.testing.assert_close(kernels.few_row_linear(x, q, scale), F.linear(x, q.float() * scale[:, None]),
                               rtol=1e-4, atol=0)  # an overflow would be off by far more
    assert kernels.few_row_linear(x, q) is None and kernels.few_row_linear(x, q, scale[:-1]) is None  # no scales
    assert kernels.few_row_linear(x, q, scale.double()) is None


def test_int8_matrices_quantise_each_row_and_the_decoder_keeps_them_fresh(model, isa):
    """Int8Matrix: |w − q·scale| ≤ scale/2 per row; an int8 FastDecoder's logits stay close to fp32's, and after its
    master is written (a merge), requantize() makes the copies match it again."""
    import copy  # noqa: PLC0415

    from engine.decoder import FastDecoder, Int8Matrix  # noqa: PLC0415

    w = torch.randn(24, 32) * torch.linspace(0.01, 3, 24)[:, None]
    m = Int8Matrix.of(w)
    assert m.q.dtype == torch.int8 and m.q.abs().max() == 127
    assert ((w - m.dequantized()).abs() <= m.scale[:, None] / 2 + 1e-7).all()
    fp32 = model.decoder
    int8 = FastDecoder(copy.deepcopy(fp32.model), quantize=True)
    cond = model.encode_text(["jazz trio", "calm piano"])
    tokens = torch.randint(0, fp32.vocab_size, (2, fp32.num_codebooks, 6), generator=torch.Generator().manual_seed(0))

    def logits(d):
        return d.forward(tokens, 0, d.new_state(cond.hidden, cond.mask, None))

    ref = logits(fp32)
    assert (logits(int8) - ref).abs().max() < 0.05 * ref.abs().max()
    int8.flat.mul_(0.5)  # as a merge writes the master
    stale = logits(int8)
    int8.requantize()
    half = FastDecoder(copy.deepcopy(fp32.model), quantize=True)
    half.flat.mul_(0.5)
    half.requantize()
    assert torch.equal(logits(int8), logits(half)) and not torch.equal(stale, logits(half))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_each_row_comes_out_the_same_wherever_it_sits(dtype, isa):
    """A row's result is bit-identical alone, first or second of a pair, or anywhere in a batch: fused requests
    (engine.fused) put a request's rows at other places than alone."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(64, 256, generator=g)
    scale = None
    if dtype == torch.int8:
        scale = torch.rand(64, generator=g) / 100
        w = torch.randint(-127, 128, (64, 256), generator=g, dtype=torch.int8)
    else:
        w = w.to(dtype)
    x = torch.randn(9, 256, generator=g)
    together = kernels.few_row_linear(x, w, scale)
    for i in range(9):
        assert torch.equal(kernels.few_row_linear(x[i:i + 1], w, scale)[0], together[i]), i
        assert torch.equal(kernels.few_row_linear(x[[(i + 1) % 9, i]], w, scale)[1], together[i]), i


def test_few_row_linear_declines_what_it_does_not_handle(isa):
    w, x = torch.randn(16, 32), torch.randn(3, 32)
    odd = 24 if kernels.simd() == "AVX-512" else 20  # I % 16 (AVX-512), I % 8 (AVX2)
    assert kernels.few_row_linear(x[:, :odd], w[:, :odd].contiguous()) is None
    assert kernels.few_row_linear(x, w[:12]) is None  # O % 8
    assert kernels.few_row_linear(x.half(), w.half()) is None
    assert kernels.few_row_linear(x.T.contiguous().T, w) is None  # no unit stride within rows
    assert kernels.few_row_linear(x, w[:, ::2].repeat(1, 2)[:, :32].T.contiguous().T) is None  # w not contiguous
    with torch.enable_grad():
        assert kernels.few_row_linear(x, w.clone().requires_grad_()) is None


@built
@pytest.mark.parametrize("guidance", [None, 3.0])
def test_sampler_same_clips_with_and_without_kernels(model, monkeypatch, guidance):
    cond, neg = model.encode_text(["jazz trio"]), model.encode_text([""])

    def run(sampling):
        return generate_codes(model.decoder, cond, 3, 10, sampling, torch.Generator().manual_seed(5), neg=neg,
                              guidance=guidance).codes

    with_kernels = run(SamplingParams(temperature=0)), run(SamplingParams(top_k=50))
    monkeypatch.setattr("engine.decoder.decode_attention", lambda *a, **kw: None)
    monkeypatch.setattr("engine.decoder.few_row_linear", lambda *a, **kw: None)
    without = run(SamplingParams(temperature=0)), run(SamplingParams(top_k=50))
    assert torch.equal(with_kernels[0], without[0]) and torch.equal(with_kernels[1], without[1])
