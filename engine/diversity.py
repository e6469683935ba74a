"""Diversity of a set of clips from their embeddings (paper Section 2.2; Vendi score as a set-level measure)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_diversity(embeddings: Tensor) -> Tensor:
    """r_D(y_i, y_j) = 1 − cos(E(y_i), E(y_j)) for embeddings (..., N, D): (..., N, N), zero diagonal."""
    e = F.normalize(embeddings.float(), dim=-1)
    r = 1 - e @ e.transpose(-1, -2)
    return r * (1 - torch.eye(r.shape[-1], device=r.device))


def mean_diversity(embeddings: Tensor) -> float:
    """Mean of r_D over the pairs i ≠ j of one set (N, D)."""
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least 2 clips")
    return float(pairwise_diversity(embeddings).sum() / (n * (n - 1)))


def vendi_score(embeddings: Tensor) -> float:
    """exp(entropy of the eigenvalues of K / N), K the cosine-similarity matrix of the set (N, D).
    1 when all clips are the same, N when they are mutually orthogonal."""
    e = F.normalize(embeddings.double(), dim=-1)
    eig = torch.linalg.eigvalsh(e @ e.T / e.shape[0]).clamp_min(0)
    eig = eig[eig > 1e-12]
    return float(torch.exp(-(eig * eig.log()).sum()))
