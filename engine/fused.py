"""Requests sampled together: concurrent requests for the same weights fused into one sampler call.

Several users asking for the same blend (say λ = 0.5, the page's default) each ran their own sampler call side by
side, so a decode step streamed the decoder's weights once per user; fused, it streams them once for all their rows
(memory-bound on a CPU: musicgen-small reads 0.3–1.2 GB of weights per step).

Each user still gets exactly the takes their request gives alone, bit for bit (tested): every request keeps its own
random generator, its own sampling settings and CFG, and its own cross-attention over its own text (as wide as it is
alone: `FastDecoder.new_fused_state`); the rows meet only where the computation is row-independent: the C matmul
kernel (in chunks of its row limit), the decode attention kernel over a shared self-attention cache, layer norms and
activations. Fusing therefore needs the C matmul kernel (CPUs with AVX2 or AVX-512); elsewhere requests run alone.

Steps of `generate_fused` (those of `engine.generate.generate_codes`, per request where they differ):
  1. each request's condition rows (and its negative rows under CFG), its cross-attention state; one shared cache;
  2. prefill the BOS column of every row;
  3. per column: for each request still running, CFG-combine its rows, sample with its generator, force the delay
     pattern, hand its streamed clip's complete frames to its tap; a request stopped by its user is let go at once
     (its rows run on, unread, until the call ends);
  4. revert each request's delay pattern.

`SamplerBatcher` runs every sampler call of a service on one engine thread with all cores (`engine.threads`: the
request threads compute on one core, so that only one OpenMP pool exists): takes that cannot be fused (longer than
the window, continuations) run there alone. A request waits for its own result, and the requests that arrive while a
call runs are sampled together in the next. A request announces itself when it starts (before its
text is encoded), and a call waits for the announced ones to join it (at most `GATHER_S`), so that users who press
Generate together share a call; a lone request does not wait at all.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from engine import threads
from engine.decoder import FastDecoder
from engine.generate import CodesOutput, FrameTap, GenerationCancelled, SamplingParams, _rows
from engine.model import TextCondition
from engine.sampling import cfg_logits, delay_valid_mask, plausible, revert_delay, sample_next_token

MAX_FUSED_ROWS = 64  # rows of one fused call (CFG rows counted): 4 users × 8 takes × 2, or 8 users × 4 takes × 2
GATHER_S = 0.25  # at most this long a call waits for announced requests to join it (their text encoding takes
# 10–50 ms each, one at a time): a quarter of the time one take of one second costs on a CPU


@dataclass(eq=False, kw_only=True)
class Job:
    """Work for the engine thread, and (once done) its result."""

    cancel: threading.Event | None = None
    context: contextvars.Context = field(default_factory=contextvars.copy_context)  # the request's (progress bars)
    out: object = None
    error: BaseException | None = None
    merge_s: float = 0.0
    started: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, out=None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.out, self.error = out, error
            self.done.set()


@dataclass(eq=False, kw_only=True)
class CallJob(Job):
    """A sampler call that runs alone (a take longer than the window, a continuation): fn(merge seconds)."""

    fn: Callable[[float], object]
    rows: int = 0


@dataclass(eq=False, kw_only=True)
class FusedJob(Job):
    """One request's part of a fused call."""

    cond: TextCondition
    num_samples: int
    sampling: SamplingParams
    generator: torch.Generator
    neg: TextCondition | None = None
    guidance: float | None = None
    plausibility: float = 0.0
    progress: Callable[[int, int], None] | None = None
    tap: FrameTap | None = None  # one clip's frames handed out while it is sampled (streaming)

    @property
    def rows(self) -> int:
        return self.num_samples * (2 if self.guidance is not None else 1)


def _conditions(job: FusedJob) -> tuple[torch.Tensor, torch.Tensor]:
    """A job's text rows as `generate_codes` lays them out alone (its own width; conditional rows, then negative)."""
    width = max(job.cond.hidden.shape[1], job.neg.hidden.shape[1] if job.neg is not None else 0)
    h, m = _rows(job.cond, job.num_samples, width)
    if job.neg is not None:
        hn, mn = _rows(job.neg, job.num_samples, width)
        h, m = torch.cat([h, hn]), torch.cat([m, mn])
    return h, m


def _sample_step(job: FusedJob, z: torch.Tensor) -> torch.Tensor:
    """The next tokens (N·K,) of one job from its rows' last logits z (rows, K, V), as `generate_codes` samples them."""
    N = job.num_samples
    if job.guidance is not None:
        z = cfg_logits(z[:N], z[N:], job.guidance, job.plausibility)
    elif job.plausibility > 0:
        z = z.masked_fill(~plausible(z, job.plausibility), float("-inf"))
    s = job.sampling
    return sample_next_token(z.reshape(N * z.shape[1], -1), job.generator, s.temperature, s.top_k, s.top_p)


@torch.inference_mode()
def generate_fused(decoder: FastDecoder, jobs: list[FusedJob], num_frames: int) -> None:
    """Sample every job's clips of `num_frames` frames in one call; each job is finished with its codes (or its
    cancellation). All jobs are plain or all CFG (the batcher's key)."""
    K, T = decoder.num_codebooks, num_frames
    L = T + K
    pad_id = decoder.config.decoder_start_token_id
    if pad_id is None:
        pad_id = decoder.config.pad_token_id
    device = decoder.device
    # 1. each job's rows and cross-attention state, one shared cache
    t0 = time.perf_counter()
    conditions = [tuple(t.to(device) for t in _conditions(job)) for job in jobs]
    state = decoder.new_fused_state(conditions, max_len=L - 1)
    rows = [s for s, _ in state.groups]
    valid = delay_valid_mask(K, T, device)
    tokens = [torch.full((job.num_samples, K, L), pad_id, dtype=torch.long, device=device) for job in jobs]

    def column(c: int) -> torch.Tensor:  # every row's input column, each job's as alone: (its tokens, again under CFG)
        return torch.cat([tok[:, :, c:c + 1].repeat(2, 1, 1) if job.guidance is not None else tok[:, :, c:c + 1]
                          for job, tok in zip(jobs, tokens, strict=True)])

    # 2. prefill
    logits = decoder.forward(column(0), 0, state)
    prefill_s = time.perf_counter() - t0
    step_times = [prefill_s]
    # 3. one column per step
    for c in range(1, L):
        for job, tok, r in zip(jobs, tokens, rows, strict=True):
            if job.done.is_set():
                continue
            if job.cancel is not None and job.cancel.is_set():
                job.finish(error=GenerationCancelled(f"stopped while sampling, at step {c} of {L - 1}"))
                continue
            nxt = _sample_step(job, logits[r, :, -1])
            tok[:, :, c] = torch.where(valid[:, c], nxt.view(job.num_samples, K), pad_id)
            if job.progress is not None:
                job.context.run(job.progress, c, L - 1)
            if job.tap is not None:
                job.tap.offer(tok, c, T)
        if c == L - 1 or all(job.done.is_set() for job in jobs):
            break
        t = time.perf_counter()
        logits = decoder.forward(column(c), c, state)
        step_times.append(time.perf_counter() - t)
    # 4. frame-aligned codes
    for job, tok in zip(jobs, tokens, strict=True):
        job.finish(CodesOutput(revert_delay(tok, T), list(step_times), prefill_s))


@dataclass(eq=False)
class _Entry:
    key: tuple | None  # requests with equal keys are fused; None: a call of its own
    decoder: FastDecoder | None
    frames: int
    weights: object  # a context holding the decoder's weights during the call (the blend gate), or None
    job: Job


class SamplerBatcher:
    """Every sampler call on one engine thread; requests that share a key (decoder, blend, length, CFG or not) fused.

    `sample` (and `call`) block until the request's own result is ready; a request stopped while it waits in line
    leaves the line at once, one stopped while sampling is let go at the next step."""

    def __init__(self, max_rows: int = MAX_FUSED_ROWS, gather_s: float = GATHER_S):
        self.max_rows, self.gather_s = max_rows, gather_s
        self._cond = threading.Condition()
        self._line: list[_Entry] = []
        self._incoming = 0  # requests announced and not yet in line (or withdrawn)
        self._worker: threading.Thread | None = None

    def announce(self) -> None:
        """A request that will `sample(..., announced=True)` (or `withdraw`) soon: calls wait for it to join."""
        with self._cond:
            self._incoming += 1

    def withdraw(self) -> None:
        """An announced request that will not come (it failed before sampling)."""
        with self._cond:
            self._incoming -= 1
            self._cond.notify_all()

    def sample(self, key: tuple, decoder: FastDecoder, frames: int, weights, job: FusedJob,
               announced: bool = False) -> CodesOutput:
        return self._wait(_Entry(key, decoder, frames, weights, job), announced)

    def call(self, fn: Callable[[float], object], weights=None, cancel: threading.Event | None = None,
             announced: bool = False):
        """fn(merge seconds) on the engine thread, alone, inside `weights`; its result (or its exception)."""
        return self._wait(_Entry(None, None, 0, weights, CallJob(fn=fn, cancel=cancel)), announced)

    def _wait(self, entry: _Entry, announced: bool):
        job = entry.job
        with self._cond:
            self._line.append(entry)
            self._incoming -= int(announced)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="fused-sampler", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        while not job.done.wait(0.05):
            if job.cancel is not None and job.cancel.is_set():
                with self._cond:
                    if not job.started:  # still in line: leave it
                        self._line.remove(entry)
                        raise GenerationCancelled("stopped before it started")
        if job.error is not None:
            raise job.error
        return job.out

    def _next_call(self) -> list[_Entry]:
        """The head of the line and every entry with its key that fits (once the announced requests are in line, or
        `gather_s` has passed)."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._line))
            if self._line[0].key is not None:
                self._cond.wait_for(lambda: self._incoming <= 0, timeout=self.gather_s)
            head = self._line[0]
            call, rows = [], 0
            for entry in list(self._line) if head.key is not None else [head]:
                if entry.key == head.key and (not call or rows + entry.job.rows <= self.max_rows):
                    call.append(entry)
                    rows += entry.job.rows
                    entry.job.started = True
                    self._line.remove(entry)
            return call

    def _work(self) -> None:
        threads.all_cores()  # the one thread that computes with every core
        while True:
            call = self._next_call()
            head, jobs = call[0], [e.job for e in call]
            try:
                with head.weights if head.weights is not None else contextlib.nullcontext(0.0) as merge_s:
                    for job in jobs:
                        job.merge_s = merge_s or 0.0
                    if isinstance(head.job, CallJob):
                        head.job.finish(head.job.context.run(head.job.fn, head.job.merge_s))
                    else:
                        generate_fused(head.decoder, jobs, head.frames)
            except BaseException as e:  # noqa: BLE001 (every waiting request gets the failure, the worker goes on)
                for job in jobs:
                    job.finish(error=e)
