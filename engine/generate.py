"""Our sampler: N clips per prompt, MusicGen's delay pattern, preallocated KV cache, optional CFG.

Steps of `generate_codes`:
  1. expand the (prompt, negative prompt) conditions to N rows each (one doubled batch under CFG);
  2. compute cross-attention K/V once and preallocate the self-attention cache for T + K positions;
  3. prefill the BOS column (and, when continuing, the prefix's columns, as one chunk);
  4. per column: CFG-combine, sample, force delay-pattern padding (and the prefix's tokens), hand the frames now
     complete to a `FrameTap` (streaming), feed the column back;
  5. revert the delay pattern to frame-aligned codes (N, K, T).

`generate_long` makes takes longer than the model's window by windowed continuation (audiocraft's extend stride):
the first window as a plain take, then each next stride continuing the last window − stride frames.
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
from engine.sampling import apply_delay, cfg_logits, delay_valid_mask, plausible, revert_delay, sample_next_token


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


class FrameTap:
    """A running take's frames handed out while it is sampled (to stream its audio): `send(codes)` gets one clip's
    (K, f) frame-aligned codes from the take's first frame to its last complete one, each time `every` more frames are
    complete and once at the end (f = the take's length). A frame is complete once every codebook has sampled it:
    with the delay pattern, `K − 1` columns after its first codebook. Called on the sampling thread: `send` should
    only hand the codes on."""

    def __init__(self, send: Callable[[Tensor], None], every: int, row: int = 0,
                 finish: Callable[[Tensor], None] | None = None, begin: Callable[[], None] | None = None):
        if every < 1:
            raise ValueError(f"a tap hands out at least one frame at a time, got every={every}")
        self.send, self.every, self.row, self.sent = send, every, row, 0
        self.finish = finish or send  # the whole take's codes (K, T), once sampling is over: `engine.service` calls it
        self.begin = begin or (lambda: None)  # the request is checked and about to sample: `engine.service` calls it

    def offer(self, tokens: Tensor, column: int, num_frames: int) -> None:
        """`tokens` (N, K, L) in the delayed layout, sampled up to `column` inclusive, for a take of `num_frames`."""
        K = tokens.shape[1]
        complete = min(column - K + 1, num_frames)
        if complete <= self.sent or (complete - self.sent < self.every and complete < num_frames):
            return
        self.sent = complete
        self.send(revert_delay(tokens[self.row:self.row + 1, :, :complete + K], complete)[0].clone())

    def after(self, start: Tensor, row: int, context: int) -> "FrameTap":
        """The tap of a window that continues the take: its clip is row `row` of that window's batch, whose codes
        follow `start` (K, s), the take's frames before the window's `context` frames (handed out already); sends the
        take from its first frame once the window has new frames."""
        tap = FrameTap(lambda codes: self.send(torch.cat([start, codes], dim=-1)), self.every, row, self.finish,
                       self.begin)
        tap.sent = context
        return tap


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
                   cancel: threading.Event | None = None, prefix: Tensor | None = None,
                   tap: FrameTap | None = None) -> CodesOutput:
    """Sample `num_samples` clips of `num_frames` frames for one prompt.

    `guidance` None: plain sampling. A float: CFG with the negative condition `neg`, as one doubled
    batch (rows 0..N-1 conditional, N..2N-1 negative) per step. γ = 1 goes through the CFG path too
    (and equals plain sampling); the service skips it for speed. `plausibility` α > 0 masks the tokens the
    conditional branch finds implausible before sampling (`engine.sampling.cfg_logits`); without CFG the same mask
    applies to the plain logits (a min-p truncation), so that the mask's effect can be told from guidance's.
    `prefix` (N or 1, K, P) frame-aligned codes, P < T: the clips continue them (the output starts with them).
    `tap`: hands one clip's frames out while it is sampled (`FrameTap`)."""
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
    forced, P = _place_prefix(tokens, prefix, T, pad_id)  # (K, L) where the prefix decides the token; its frames

    # 3. prefill: BOS and the columns the prefix fills completely (1..P), as one chunk
    column = tokens[:, :, 0:P + 1]
    logits = decoder.forward(column.repeat(2, 1, 1) if use_cfg else column, 0, state)  # (B, K, P + 1, V)
    prefill_s = time.perf_counter() - t0
    step_times = [prefill_s]

    # 4. one column per step
    known = tokens.clone() if forced is not None else None
    for c in range(P + 1, L):
        stop_if_cancelled(cancel, f"while sampling, at step {c} of {L - 1}")
        z = logits[:, :, -1]  # (B, K, V)
        if use_cfg:
            z = cfg_logits(z[:N], z[N:], guidance, plausibility)  # (N, K, V)
        elif plausibility > 0:  # the mask alone (min-p truncation): what CFG's mask does without guidance
            z = z.masked_fill(~plausible(z, plausibility), float("-inf"))
        nxt = sample_next_token(z.reshape(N * K, -1), generator, sampling.temperature, sampling.top_k, sampling.top_p)
        tokens[:, :, c] = torch.where(valid[:, c], nxt.view(N, K), pad_id)
        if forced is not None:  # the codebooks still inside the prefix at this column (delay pattern) keep its tokens
            tokens[:, :, c] = torch.where(forced[:, c], known[:, :, c], tokens[:, :, c])
        if progress is not None:
            progress(c, L - 1)
        if tap is not None:
            tap.offer(tokens, c, T)
        if c == L - 1:
            break
        t = time.perf_counter()
        column = tokens[:, :, c:c + 1]
        logits = decoder.forward(column.repeat(2, 1, 1) if use_cfg else column, c, state)
        step_times.append(time.perf_counter() - t)

    # 5. frame-aligned codes
    return CodesOutput(revert_delay(tokens, T), step_times, prefill_s)


def _place_prefix(tokens: Tensor, prefix: Tensor | None, num_frames: int, pad_id: int) -> tuple[Tensor | None, int]:
    """Write a prefix's tokens into the delayed layout `tokens` (N, K, L) in place; returns the (K, L) mask of the
    positions it decides (None without a prefix) and its length P in frames (0 without one)."""
    if prefix is None:
        return None, 0
    N, K, _ = tokens.shape
    if prefix.dim() != 3 or prefix.shape[1] != K or prefix.shape[0] not in (1, N):
        raise ValueError(f"prefix must be (1 or {N}, {K}, frames), got {tuple(prefix.shape)}")
    P = prefix.shape[-1]
    if not 0 < P < num_frames:
        raise ValueError(f"a prefix of {P} frames leaves nothing to generate in {num_frames}")
    delayed = apply_delay(prefix.to(tokens.device).long().expand(N, -1, -1), pad_id)  # (N, K, P + K)
    forced = torch.zeros(K, tokens.shape[-1], dtype=torch.bool, device=tokens.device)
    forced[:, :P + K] = delay_valid_mask(K, P, tokens.device)
    tokens[:, :, :P + K] = torch.where(forced[:, :P + K], delayed, tokens[:, :, :P + K])
    return forced, P


@dataclass(frozen=True)
class Continuation:
    """How a take longer than the model's window is made (audiocraft's extend stride): windows of `window` frames,
    each after the first adding `stride` new frames after the last `window − stride` of the take so far. `bar`: for a
    model whose music sits on a grid counted from its first frame (nano: it only ever saw pieces from their start),
    the frames of one clip's bar (None where it cannot tell); each clip's context then starts on a bar line, at most
    `window − stride` frames back, and the clips are continued one by one (their bars differ)."""

    window: int
    stride: int
    bar: Callable[[Tensor], int | None] | None = None  # (K, T) codes -> frames per bar

    def __post_init__(self):
        if not 0 < self.stride < self.window:
            raise ValueError(f"the stride must be in 1..window − 1 frames, got {self.stride} of {self.window}")


@torch.inference_mode()
def generate_long(decoder: FastDecoder, cond: TextCondition, num_samples: int, num_frames: int,
                  sampling: SamplingParams, generator: torch.Generator | None, continuation: Continuation,
                  prefix: Tensor | None = None, progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None, tap: FrameTap | None = None, **cfg) -> CodesOutput:
    """`num_frames` frames per clip, any length: the first window as `generate_codes` makes it (so the first window of
    a long take is the plain take with the same seed), then windowed continuation; the same generator throughout, so
    the seed decides every window. `prefix` (N or 1, K, P): continue these codes instead of starting afresh (a take
    to extend or to give new endings); the output starts with them. `tap`: one clip's frames from the take's first
    one, handed out while every window is sampled. `cfg`: generate_codes' guidance, neg and plausibility."""
    window = continuation.window
    codes = None if prefix is None else prefix.expand(num_samples, -1, -1)
    if codes is not None and codes.shape[-1] >= num_frames:
        raise ValueError(f"the take is already {codes.shape[-1]} frames long; ask for more than that")
    steps, prefill = [], 0.0
    while codes is None or codes.shape[-1] < num_frames:
        done = 0 if codes is None else codes.shape[-1]
        new = min(window if codes is None else continuation.stride, num_frames - done)
        report = None if progress is None else (lambda i, n, done=done, new=new:
                                                progress(done + round(i / n * new), num_frames))
        if codes is None:  # the first window: the plain take
            out = generate_codes(decoder, cond, num_samples, new, sampling, generator, progress=report,
                                 cancel=cancel, tap=tap, **cfg)
            codes, runs = out.codes, [out]
        else:
            extended, runs = torch.empty(*codes.shape[:2], new, dtype=codes.dtype, device=codes.device), []
            for rows, context in _contexts(codes, continuation):
                window_tap = None
                if tap is not None and tap.row in rows:  # the streamed clip: the take before its context, then this
                    window_tap = tap.after(codes[tap.row, :, :done - context.shape[-1]], rows.index(tap.row),
                                           context.shape[-1])
                runs.append(generate_codes(decoder, cond, len(rows), context.shape[-1] + new, sampling, generator,
                                           progress=report, cancel=cancel, prefix=context, tap=window_tap, **cfg))
                extended[rows] = runs[-1].codes[:, :, context.shape[-1]:]
            codes = torch.cat([codes, extended], dim=-1)
        steps += [t for run in runs for t in run.step_times_s]
        prefill += sum(run.prefill_s for run in runs)
    return CodesOutput(codes, steps, prefill)


def _contexts(codes: Tensor, continuation: Continuation) -> list[tuple[list[int], Tensor]]:
    """The context each next window continues, as (rows, their frames from one start on): all rows from
    `window − stride` frames back, or (with `bar`) each row from its first bar line at most that far back, the rows
    whose contexts start at the same frame together (one batch per tempo)."""
    done = codes.shape[-1]
    back = max(done - (continuation.window - continuation.stride), 0)
    starts = [back] * codes.shape[0]
    if continuation.bar is not None:
        bars = [continuation.bar(clip) for clip in codes]
        starts = [-(-back // bar) * bar if bar and -(-back // bar) * bar < done else back for bar in bars]
    groups: dict[int, list[int]] = {}
    for row, start in enumerate(starts):
        groups.setdefault(start, []).append(row)
    return [(rows, codes[rows, :, start:]) for start, rows in groups.items()]
