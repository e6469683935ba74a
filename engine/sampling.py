"""Pure sampling functions and MusicGen's delay pattern. No model state here: explicit RNG, shapes in comments."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def cfg_logits(cond: Tensor, neg: Tensor, guidance: float, plausibility: float = 0.0) -> Tensor:
    """Classifier-free guidance, Eq. 1 of the paper: z = γ·z_cond + (1−γ)·z_neg.

    Written as z_neg + γ·(z_cond − z_neg), the same quantity in fewer operations (and the form
    transformers and audiocraft use). `neg` holds the negative-prompt or unconditional logits.

    `plausibility` α > 0 (our addition, not the paper's): the adaptive plausibility constraint of contrastive
    decoding (Li et al., 2023). Tokens the conditional model itself finds implausible, p_cond < α · max p_cond, get
    logit −inf before sampling, so that guidance can only reorder tokens the model would play anyway. α = 0 is the
    paper's CFG, computed exactly as without the option."""
    z = neg + guidance * (cond - neg)
    if plausibility > 0:
        z = z.masked_fill(~plausible(cond, plausibility), float("-inf"))
    return z


def plausible(cond: Tensor, plausibility: float) -> Tensor:
    """Bool mask of the tokens with p_cond ≥ α · max p_cond, from the conditional logits (…, V); the most likely
    token always stays. In logits: z_cond ≥ max z_cond + log α (the softmax normaliser cancels)."""
    cond = cond.float()
    return cond >= cond.max(dim=-1, keepdim=True).values + math.log(plausibility)


def nucleus(logits: Tensor, top_p: float) -> Tensor:
    """Bool mask (…, V) of the nucleus: the most likely tokens whose probabilities first reach `top_p` (a token is
    dropped when the tokens ranked above it already cover top_p; the first always stays). The same rule as
    `sample_next_token`'s top-p, for the distillation teacher."""
    probs, order = logits.float().softmax(dim=-1).sort(dim=-1, descending=True)
    keep_sorted = (probs.cumsum(dim=-1) - probs) < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def sample_next_token(logits: Tensor, generator: torch.Generator | None, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Sample one token per row of `logits` (N, V) -> (N,) long.

    temperature 0 means greedy (argmax). top_k 0 and top_p 0 disable those filters; top-k is applied
    before top-p, as in transformers. Sampling is by inverse CDF: one uniform draw per row from
    `generator` (torch.multinomial draws one per vocabulary entry, ~10× slower here)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    index = None  # (N, k) vocabulary ids of the kept candidates, when filtered
    if 0 < top_k < logits.shape[-1]:
        logits, index = logits.topk(top_k, dim=-1, sorted=0 < top_p < 1)  # (N, k)
    if 0 < top_p < 1:
        if index is None:
            logits, index = logits.sort(dim=-1, descending=True)
        probs = logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p; the first always stays
        logits = logits.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p, float("-inf"))
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (N, k)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]  # (N, 1)
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)  # first cdf > u
    if index is not None:
        choice = index.gather(-1, choice)
    return choice.squeeze(-1)


def delay_valid_mask(num_codebooks: int, num_frames: int, device=None) -> Tensor:
    """(K, T + K) bool: True where codebook k holds a real token in the delayed layout.

    Column 0 is the BOS column; codebook k's frame f sits at column f + k + 1. Everything else is
    padding (the BOS triangle on the left, the EOS triangle on the right), as in transformers'
    `MusicgenForCausalLM.build_delay_pattern_mask`."""
    col = torch.arange(num_frames + num_codebooks, device=device)[None, :]  # (1, L)
    k = torch.arange(num_codebooks, device=device)[:, None]  # (K, 1)
    return (col > k) & (col <= k + num_frames)


def apply_delay(codes: Tensor, pad_id: int) -> Tensor:
    """(B, K, T) frame-aligned codes -> (B, K, T + K) delayed layout with a BOS column, pads elsewhere."""
    B, K, T = codes.shape
    out = codes.new_full((B, K, T + K), pad_id)
    for k in range(K):
        out[:, k, k + 1:k + 1 + T] = codes[:, k]
    return out


def revert_delay(delayed: Tensor, num_frames: int) -> Tensor:
    """(B, K, T + K) delayed layout -> (B, K, T) frame-aligned codes."""
    K = delayed.shape[1]
    return torch.stack([delayed[:, k, k + 1:k + 1 + num_frames] for k in range(K)], dim=1)
