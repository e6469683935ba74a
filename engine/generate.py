"""Our sampler: N clips per prompt, MusicGen's delay pattern, preallocated KV cache, optional CFG.

Steps of `generate_codes`:
  1. expand the (prompt, negative prompt) conditions to N rows each (one doubled batch under CFG);
  2. compute cross-attention K/V once and preallocate the self-attention cache for T + K positions;
  3. prefill the BOS column;
  4. per column: CFG-combine, sample, force delay-pattern padding, feed the column back;
  5. revert the delay pattern to frame-aligned codes (N, K, T).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from engine.decoder import FastDecoder
from engine.model import TextCondition
from engine.sampling import cfg_logits, delay_valid_mask, plausible, revert_delay, sample_next_token


class GenerationCancelled(RuntimeError):
    """Raised when a request's cancel event is set while it runs."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 250  # MusicGen's default
    top_p: float = 0.0


@dataclass
class CodesOutput:
    codes: Tensor  # (N, K, T) long, frame-aligned
    step_times_s: list[float] = field(default_factory=list)  # wall time of each decoder forward
    prefill_s: float = 0.0


def _rows(cond: TextCondition, n: int, width: int) -> tuple[Tensor, Tensor]:
    """Repeat a single-prompt condition to n rows and pad its length to `width`."""
    if cond.hidden.shape[0] != 1:
        raise ValueError("conditions are encoded one prompt at a time")
    h, m = cond.padded(width)
    return h.expand(n, -1, -1), m.expand(n, -1)


def stop_if_cancelled(cancel, when: str = "") -> None:
    """Raise GenerationCancelled ("stopped <when>") if the request's cancel signal is set."""
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled(f"stopped {when}".strip())


@torch.inference_mode()
def generate_codes(decoder: FastDecoder, cond: TextCondition, num_samples: int, num_frames: int,
                   sampling: SamplingParams, generator: torch.Generator | None,
                   neg: TextCondition | None = None, guidance: float | None = None,
                   progress: Callable[[int, int], None] | None = None, plausibility: float = 0.0,
                   cancel: threading.Event | None = None) -> CodesOutput:
    """Sample `num_samples` clips of `num_frames` frames for one prompt.

    `guidance` None: plain sampling. A float: CFG with the negative condition `neg`, as one doubled
    batch (rows 0..N-1 conditional, N..2N-1 negative) per step. γ = 1 goes through the CFG path too
    (and equals plain sampling); the service skips it for speed. `plausibility` α > 0 masks the tokens the
    conditional branch finds implausible before sampling (`engine.sampling.cfg_logits`); without CFG the same mask
    applies to the plain logits (a min-p truncation), so that the mask's effect can be told from guidance's."""
    use_cfg = guidance is not None
    if use_cfg and neg is None:
        raise ValueError("CFG needs a negative condition (the empty prompt for unconditional)")
    K, N, T = decoder.num_codebooks, num_samples, num_frames
    L = T + K  # delayed columns including BOS
    pad_id = decoder.config.decoder_start_token_id
    if pad_id is None:
        pad_id = decoder.config.pad_token_id
    device = decoder.device

    # 1-2. conditions and cache
    width = max(cond.hidden.shape[1], neg.hidden.shape[1] if use_cfg else 0)
    h, m = _rows(cond, N, width)
    if use_cfg:
        hn, mn = _rows(neg, N, width)
        h, m = torch.cat([h, hn]), torch.cat([m, mn])
    h, m = h.to(device), m.to(device)  # text encoders return CPU tensors
    t0 = time.perf_counter()
    state = decoder.new_state(h, m, max_len=L - 1)
    valid = delay_valid_mask(K, T, device)  # (K, L)
    tokens = torch.full((N, K, L), pad_id, dtype=torch.long, device=device)  # delayed layout, column 0 = BOS

    # 3. prefill
    column = tokens[:, :, 0:1]
    logits = decoder.forward(column.repeat(2, 1, 1) if use_cfg else column, 0, state)  # (B, K, 1, V)
    prefill_s = time.perf_counter() - t0
    step_times = [prefill_s]

    # 4. one column per step
    for c in range(1, L):
        stop_if_cancelled(cancel, f"while sampling, at step {c} of {L - 1}")
        z = logits[:, :, -1]  # (B, K, V)
        if use_cfg:
            z = cfg_logits(z[:N], z[N:], guidance, plausibility)  # (N, K, V)
        elif plausibility > 0:  # the mask alone (min-p truncation): what CFG's mask does without guidance
            z = z.masked_fill(~plausible(z, plausibility), float("-inf"))
        nxt = sample_next_token(z.reshape(N * K, -1), generator, sampling.temperature, sampling.top_k, sampling.top_p)
        tokens[:, :, c] = torch.where(valid[:, c], nxt.view(N, K), pad_id)
        if progress is not None:
            progress(c, L - 1)
        if c == L - 1:
            break
        t = time.perf_counter()
        column = tokens[:, :, c:c + 1]
        logits = decoder.forward(column.repeat(2, 1, 1) if use_cfg else column, c, state)
        step_times.append(time.perf_counter() - t)

    # 5. frame-aligned codes
    return CodesOutput(revert_delay(tokens, T), step_times, prefill_s)
