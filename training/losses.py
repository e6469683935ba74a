"""Losses of diversity-rewarded CFG distillation, as pure functions (paper Section 2, Appendix A).

Q (Eq. 2): the per-token KL(π_θ(·|y<n, x) ‖ π^CFG_θinit(·|y<n, x)), summed over positions and codebooks,
on sequences sampled from the student. The teacher's logits are γ·z(x) + (1−γ)·z(x⁻) from the frozen base,
computed by `engine.sampling.cfg_logits`, the same formula the sampler uses.

D (Eq. 3–4, Appendix A): REINFORCE on the diversity reward. For N samples of one prompt, sample j's reward
is R_j = mean_{i≠j} r_D(y_j, y_i). Then E[R_j ∇log p(y_j)] = ½∇D, whatever N: the paper's estimator
(Eq. 4, which is ∇J of Eq. 8 for N = 2), so β keeps the paper's scale. A baseline b_j must not depend on
y_j to keep the estimator unbiased. Note that the other samples' rewards R_k do depend on y_j (they
contain r_D(y_k, y_j)), so the naive leave-one-out mean of R_k is biased, and with N = 2 it equals R_j,
giving zero advantage. The baselines here:
  - "loo": mean pairwise reward among the other samples of the prompt, pairs with j excluded (N ≥ 3);
  - "batch": mean reward of the samples of the other prompts in the batch (any N ≥ 2, ≥ 2 prompts).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.sampling import cfg_logits, nucleus

MASKED_TEACHER_FLOOR = 1e-4  # teacher mass spread uniformly over the vocabulary when the plausibility mask is on


DIVERGENCES = ("reverse", "forward")
BASELINES = ("loo", "batch")  # REINFORCE baselines (see the module docstring)


def cfg_distillation_kl(student: Tensor, teacher_cond: Tensor, teacher_neg: Tensor, guidance: float, mask: Tensor,
                        temperature: float = 1.0, plausibility: float = 0.0, top_p: float = 0.0,
                        divergence: str = "reverse") -> Tensor:
    """Per-sequence KL(student ‖ CFG teacher), summed over real positions and codebooks: (B,).

    Logits are (B, K, L, V); mask (B, K, L) is True at real (non delay-padding) positions.
    With the plausibility mask (α > 0) the teacher gives the tokens it masks probability 0, and KL(student ‖ teacher)
    is infinite as soon as the student puts any mass there. The teacher used here is therefore the masked CFG
    distribution mixed with a uniform floor, q' = (1 − ε)·q_masked + ε/V (ε = MASKED_TEACHER_FLOOR): a proper
    distribution, finite everywhere, whose KL charges each unit of student mass on a masked token about
    log(V/ε) ≈ 15 nats (V = 512), so the gradient drives that mass away without exploding.

    `divergence` "forward" (our option, not the paper's) takes KL(teacher ‖ student) on the same on-policy
    positions instead: mass-covering where the paper's reverse KL is mode-seeking. On nano the reverse KL drove the
    student to hold notes rather than risk a melody note (a melody onset's mass is spread over many pitches, HOLD is
    the mode): θ_q's melody played its part in 49 % of validation clips, its teacher's in 94 %."""
    log_p = F.log_softmax(student.float() / temperature, dim=-1)
    log_q = teacher_log_probs(teacher_cond, teacher_neg, guidance, temperature, plausibility, top_p)
    if divergence == "forward":  # KL(teacher ‖ student): mass-covering (our option; see the docstring)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, K, L)
    return (kl * mask).sum(dim=(1, 2))


def teacher_log_probs(cond: Tensor, neg: Tensor, guidance: float, temperature: float = 1.0,
                      plausibility: float = 0.0, top_p: float = 0.0) -> Tensor:
    """log q of the CFG teacher at `temperature` (…, V); with α > 0 the floored masked teacher (see above); with
    0 < top_p < 1 the CFG distribution truncated to its nucleus after the temperature (as the sampler does), floored
    the same way."""
    z = cfg_logits(cond, neg, guidance, plausibility).float() / temperature
    truncated = plausibility > 0 or 0 < top_p < 1
    if 0 < top_p < 1:
        z = z.masked_fill(~nucleus(z, top_p), float("-inf"))
    log_q = F.log_softmax(z, dim=-1)
    if truncated:
        vocab = log_q.shape[-1]
        log_q = torch.logaddexp(log_q + math.log1p(-MASKED_TEACHER_FLOOR),
                                torch.full_like(log_q, math.log(MASKED_TEACHER_FLOOR / vocab)))
    return log_q


def per_sample_rewards(distances: Tensor) -> Tensor:
    """R_j = mean_{i≠j} r_D(y_j, y_i) from pairwise distances (P prompts, N, N) with a zero diagonal: (P, N).
    r_D is 1 − cosine of E's embeddings (`engine.diversity.pairwise_diversity`, the paper's) or, on nano, the
    share of differing note events (`engine.exact.event_distances`)."""
    N = distances.shape[-1]
    if N < 2:
        raise ValueError("the diversity reward needs at least 2 samples per prompt")
    return distances.sum(-1) / (N - 1)


def baselines(distances: Tensor | None, rewards: Tensor, kind: str) -> Tensor:
    """Baselines b (P, N) independent of each sample's own generation (see the module docstring). `distances`
    (P, N, N) of a pairwise reward ('loo' needs them; None for a set-level reward)."""
    P, N = rewards.shape
    if kind == "loo":
        if N < 3:
            raise ValueError("the leave-one-out baseline needs N ≥ 3 samples per prompt (with N = 2 use 'batch')")
        if distances is None:
            raise ValueError("the leave-one-out baseline needs a pairwise reward's distances; use 'batch'")
        r = distances  # (P, N, N)
        total = r.sum(dim=(-1, -2))  # (P,) sum over ordered pairs
        without_j = total[:, None] - 2 * r.sum(-1)  # remove the pairs that involve j
        return without_j / ((N - 1) * (N - 2))
    if kind == "batch":
        if P < 2:
            raise ValueError("the batch baseline needs at least 2 prompts in the batch")
        per_prompt = rewards.sum(-1)  # (P,)
        return ((per_prompt.sum() - per_prompt) / ((P - 1) * N))[:, None].expand(P, N)
    raise ValueError(f"unknown baseline {kind!r}; use one of {BASELINES}")


def reinforce_surrogate(log_probs: Tensor, advantages: Tensor) -> Tensor:
    """Scalar whose gradient is the REINFORCE estimate mean_j A_j ∇log p(y_j) (ascend it).

    log_probs (P, N): log p_θ(y_j | x) of whole sequences, differentiable; advantages (P, N), no gradient."""
    return (advantages.detach() * log_probs).mean()
