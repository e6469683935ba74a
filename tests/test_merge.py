"""Merging endpoints into the serving weights."""
import pytest
import torch
from conftest import perturbed_state

from engine.merge import Blend


def _serving_state(service):
    return {n: p.detach().clone() for n, p in service.serving.model.named_parameters()}


def _merge(service, blend):
    with service.gate.use(blend):
        return _serving_state(service)


def test_endpoints_are_bit_exact(service):
    q, d = perturbed_state(service.model, 1), perturbed_state(service.model, 2)
    for lam, ref in ((0.0, q), (1.0, d), (0.0, q)):  # and back again: nothing accumulates
        state = _merge(service, Blend.lerp("q", "d", lam))
        assert all(torch.equal(state[n], ref[n]) for n in ref)


def test_half_is_the_elementwise_mean_and_independent_of_history(service):
    q, d = perturbed_state(service.model, 1), perturbed_state(service.model, 2)
    first = _merge(service, Blend.lerp("q", "d", 0.5))
    torch.testing.assert_close(first, {n: (q[n] + d[n]) / 2 for n in q}, rtol=0, atol=1e-7)
    for lam in (0.9, 0.1, 0.37):
        torch.testing.assert_close(_merge(service, Blend.lerp("q", "d", lam)),
                                   {n: torch.lerp(q[n], d[n], lam) for n in q})
    again = _merge(service, Blend.lerp("q", "d", 0.5))  # recomputed from the endpoints: bit-identical
    assert all(torch.equal(again[n], first[n]) for n in q)


def test_lerp_toward_base(service):
    q = perturbed_state(service.model, 1)
    base = dict(service.base.model.named_parameters())
    state = _merge(service, Blend.lerp("q", "base", 0.25))
    torch.testing.assert_close(state, {n: 0.75 * q[n] + 0.25 * base[n].detach() for n in q}, rtol=0, atol=1e-6)
    assert torch.equal(_merge(service, Blend.lerp("q", "base", 1.0))["lm_heads.0.weight"], base["lm_heads.0.weight"])


def test_uniform_soup_of_three(service):
    states = [perturbed_state(service.model, s) for s in (1, 2)] + [dict(service.base.model.named_parameters())]
    state = _merge(service, Blend.soup(["q", "d", "base"]))
    ref = {n: sum(s[n].detach() for s in states) / 3 for n in states[0]}
    torch.testing.assert_close(state, ref, rtol=0, atol=1e-6)


def test_merge_writes_in_place_without_new_buffers(service):
    ptr = service.serving.flat.data_ptr()
    param_ptrs = [p.data_ptr() for p in service.serving.model.parameters()]
    _merge(service, Blend.lerp("q", "d", 0.3))
    assert service.serving.flat.data_ptr() == ptr
    assert [p.data_ptr() for p in service.serving.model.parameters()] == param_ptrs
    assert service.base.flat.data_ptr() == service.mixer.endpoints["base"].data_ptr()  # base kept by reference


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), float("inf"), "0.5", True])
def test_lambda_outside_unit_interval_is_refused(lam):
    with pytest.raises(ValueError, match="λ"):
        Blend.lerp("q", "d", lam)


def test_bad_blends_are_refused(service):
    with pytest.raises(ValueError, match="sum to 1"):
        Blend((("q", 0.5), ("d", 0.6)))
    with pytest.raises(ValueError, match="finite"):
        Blend((("q", float("nan")), ("d", 0.5)))
    with pytest.raises(ValueError, match="twice"):
        Blend.lerp("q", "q", 0.5)
    with pytest.raises(ValueError, match="not loaded"):
        service.generate_merged(__import__("engine.service").service.Request("x", num_clips=1, duration_s=0.1),
                                Blend.lerp("q", "beta5", 0.5))


def test_affine_blend_extrapolates_like_the_formula(service):
    """Task arithmetic θ_q + λ·(θ_d − base) is the affine blend q: 1, d: λ, base: −λ; the mixer writes exactly it."""
    lam = 0.5
    blend = Blend((("q", 1.0), ("d", lam), ("base", -lam)))
    service.mixer.apply(blend)
    e = service.mixer.endpoints
    expected = e["q"] + lam * (e["d"] - e["base"])
    assert torch.allclose(service.serving.flat, expected, atol=1e-6)
    service.gate.current = None  # the next request re-merges its own blend
