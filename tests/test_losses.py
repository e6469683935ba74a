"""Losses of diversity-rewarded CFG distillation: KL (Eq. 2) and the REINFORCE diversity estimator (Eq. 3-4)."""
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from engine.diversity import pairwise_diversity
from engine.sampling import cfg_logits, plausible
from training.losses import (
    MASKED_TEACHER_FLOOR,
    baselines,
    cfg_distillation_kl,
    per_sample_rewards,
    reinforce_surrogate,
    teacher_log_probs,
)


def _logits(seed, shape=(2, 4, 6, 11)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_kl_is_zero_when_student_is_the_teacher_without_guidance():
    s, n = _logits(0), _logits(1)
    mask = torch.ones(s.shape[:-1], dtype=torch.bool)
    assert cfg_distillation_kl(s, s, n, 1.0, mask).abs().max() < 1e-5


def test_kl_value_and_direction():
    s, c, n = _logits(0), _logits(1), _logits(2)
    mask = torch.ones(s.shape[:-1], dtype=torch.bool)
    teacher = cfg_logits(c, n, 3.0)
    expected = kl_divergence(Categorical(logits=s), Categorical(logits=teacher)).sum(dim=(1, 2))
    torch.testing.assert_close(cfg_distillation_kl(s, c, n, 3.0, mask), expected, rtol=1e-4, atol=1e-4)
    reverse = kl_divergence(Categorical(logits=teacher), Categorical(logits=s)).sum(dim=(1, 2))
    assert not torch.allclose(expected, reverse, rtol=1e-2)  # KL(student ‖ teacher), not the other way


def test_kl_masks_padding():
    s, c, n = _logits(0), _logits(1), _logits(2)
    mask = torch.rand(s.shape[:-1], generator=torch.Generator().manual_seed(3)) > 0.4
    garbage = s.clone()
    garbage[~mask] = 50 * torch.randn_like(garbage[~mask])
    torch.testing.assert_close(cfg_distillation_kl(s, c, n, 3.0, mask), cfg_distillation_kl(garbage, c, n, 3.0, mask))
    assert cfg_distillation_kl(s, c, n, 3.0, torch.zeros_like(mask)).abs().max() == 0


def test_pairwise_diversity_and_rewards():
    e = torch.randn(3, 5, 8)
    r = pairwise_diversity(e)
    assert torch.allclose(r, r.transpose(-1, -2)) and r.diagonal(dim1=-2, dim2=-1).abs().max() == 0
    same = pairwise_diversity(torch.ones(1, 4, 8))
    assert per_sample_rewards(same).abs().max() < 1e-6  # identical clips: no diversity
    with pytest.raises(ValueError, match="at least 2"):
        per_sample_rewards(pairwise_diversity(torch.randn(2, 1, 8)))


def test_baselines_ignore_the_sample_they_serve():
    e = torch.randn(3, 4, 8)
    for kind in ("loo", "batch"):
        d = pairwise_diversity(e)
        b = baselines(d, per_sample_rewards(d), kind)
        moved = e.clone()
        moved[1, 2] = torch.randn(8)  # change sample (1, 2) only
        d2 = pairwise_diversity(moved)
        b2 = baselines(d2, per_sample_rewards(d2), kind)
        assert torch.allclose(b[1, 2], b2[1, 2])
        advantages = per_sample_rewards(d) - b
        assert advantages.abs().min() > 0  # N ≥ 3: informative advantages


def test_two_samples_trap():
    """With N = 2, both samples share one reward: a within-prompt baseline cannot work."""
    e = pairwise_diversity(torch.randn(4, 2, 8))
    rewards = per_sample_rewards(e)
    assert torch.allclose(rewards[:, 0], rewards[:, 1])
    with pytest.raises(ValueError, match="N ≥ 3"):
        baselines(e, rewards, "loo")
    assert (rewards - baselines(e, rewards, "batch")).abs().min() > 0


@pytest.mark.parametrize("kind", ["loo", "batch"])
def test_reinforce_matches_the_exact_gradient_in_expectation(kind):
    """Toy categorical policy: mean estimate of the surrogate's gradient ≈ ½ ∇D with D = E[r_D(y1, y2)]."""
    g = torch.Generator().manual_seed(0)
    V, N, M = 5, 4, 40000
    emb = torch.randn(V, 3, generator=g)
    theta = torch.randn(V, generator=g, requires_grad=True)
    p = theta.softmax(-1)
    exact = torch.autograd.grad(p @ pairwise_diversity(emb) @ p, theta)[0]
    y = torch.multinomial(p.detach().expand(M, V), N, replacement=True, generator=g)  # (M prompts, N samples)
    log_probs = theta.log_softmax(-1)[y]
    e = pairwise_diversity(emb[y])
    rewards = per_sample_rewards(e)
    adv = rewards - baselines(e, rewards, kind)
    estimate = torch.autograd.grad(reinforce_surrogate(log_probs, adv), theta)[0]
    torch.testing.assert_close(estimate, exact / 2, atol=0.01, rtol=0.1)


def test_kl_against_a_masked_teacher_is_finite_and_pushes_mass_off_masked_tokens():
    s, c, n = _logits(0), _logits(1), _logits(2)
    mask = torch.ones(s.shape[:-1], dtype=torch.bool)
    # α = 0: exactly the unmasked teacher
    assert torch.equal(cfg_distillation_kl(s, c, n, 3.0, mask, 1.0, 0.0), cfg_distillation_kl(s, c, n, 3.0, mask))
    keep = plausible(c, 0.3)
    assert (~keep).any() and keep.any(-1).all()
    student = s.clone().requires_grad_(True)
    kl = cfg_distillation_kl(student, c, n, 3.0, mask, 1.0, 0.3)
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    kl.sum().backward()
    # a gradient step lowers the student's total probability on masked tokens at every position
    masked_mass = lambda logits: (torch.softmax(logits, -1) * ~keep).sum(-1)
    some = (~keep).any(-1)
    assert (masked_mass(student.detach() - 0.1 * student.grad)[some] < masked_mass(student.detach())[some]).all()
    # the student that equals the floored masked teacher has KL 0
    teacher = teacher_log_probs(c, n, 3.0, 1.0, 0.3)
    assert cfg_distillation_kl(teacher, c, n, 3.0, mask, 1.0, 0.3).abs().max() < 1e-3
    assert torch.allclose(teacher.exp().sum(-1), torch.ones(()))
    assert (teacher.exp()[~keep] <= MASKED_TEACHER_FLOOR).all()


def test_a_top_p_teacher_keeps_its_nucleus_and_floors_the_rest():
    from engine.sampling import nucleus  # noqa: PLC0415 (the rule the teacher shares with the sampler)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert nucleus(probs.log(), 0.75).tolist() == [[True, True, False, False]]  # as sample_next_token's top-p
    s, c, n = _logits(0), _logits(1), _logits(2)
    mask = torch.ones(s.shape[:-1], dtype=torch.bool)
    assert torch.equal(cfg_distillation_kl(s, c, n, 3.0, mask, 1.0, 0.0, 0.0), cfg_distillation_kl(s, c, n, 3.0, mask))
    teacher = teacher_log_probs(c, n, 3.0, 1.0, 0.0, 0.6)
    keep = nucleus(cfg_logits(c, n, 3.0), 0.6)
    assert torch.allclose(teacher.exp().sum(-1), torch.ones(())) and (~keep).any()
    assert (teacher.exp()[~keep] <= MASKED_TEACHER_FLOOR).all()
    # inside the nucleus, the teacher is the CFG distribution renormalised on it
    cfg = torch.softmax(cfg_logits(c, n, 3.0), -1) * keep
    assert torch.allclose(teacher.exp() * keep, (cfg / cfg.sum(-1, keepdim=True)) * (1 - MASKED_TEACHER_FLOOR),
                          atol=1e-4)
    assert cfg_distillation_kl(teacher, c, n, 3.0, mask, 1.0, 0.0, 0.6).abs().max() < 1e-3


def test_the_forward_divergence_is_the_teachers_cross_entropy_to_the_student():
    s, c, n = _logits(0), _logits(1), _logits(2)
    mask = torch.ones(s.shape[:-1], dtype=torch.bool)
    q = teacher_log_probs(c, n, 3.0, 1.0, 0.0, 0.8)
    fwd = cfg_distillation_kl(s, c, n, 3.0, mask, 1.0, 0.0, 0.8, divergence="forward")
    expected = (q.exp() * (q - torch.log_softmax(s, -1))).sum(-1).sum(dim=(1, 2))
    assert torch.allclose(fwd, expected, atol=1e-4) and (fwd >= 0).all()
    # mass-covering: a student that puts everything on the teacher's mode pays more forward than reverse
    mode = torch.full_like(s, -30.0).scatter(-1, q.argmax(-1, keepdim=True), 0.0)
    rev_mode = cfg_distillation_kl(mode, c, n, 3.0, mask, 1.0, 0.0, 0.8)
    fwd_mode = cfg_distillation_kl(mode, c, n, 3.0, mask, 1.0, 0.0, 0.8, divergence="forward")
    assert (fwd_mode > rev_mode).all()
