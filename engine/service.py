"""The serving object: one base model (for CFG A/B and LERP-to-base) and one merged serving decoder,
safe to call from many threads at once.

Thread safety of the merged decoder: its weights depend on the blend (λ). `BlendGate` admits requests
in arrival order; requests for the blend currently in the weights run together, and a request for
another blend waits until they are done, then re-merges. So no generation ever sees half-merged
weights or another user's λ, and a request returns exactly what it returns when run alone.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from engine import exact, kernels, loudness
from engine.cfg import DEFAULT_NEGATIVE_PROMPT, CfgSetting, check_number
from engine.checkpoint import CheckpointError
from engine.decoder import FastDecoder
from engine.fused import FusedJob, SamplerBatcher
from engine.generate import Continuation, FrameTap, SamplingParams, generate_codes, generate_long, stop_if_cancelled
from engine.merge import Blend, WeightMixer
from engine.model import MusicModel, load_model, parse_dtype
from engine.score_codec import ScoreCodec

MAX_CLIPS = 8
MAX_PROMPT_CHARS = 500
MAX_SEED = 2**63 - 1
# A θ finetuned from the base stays near it (shipped θ_q, θ_d: 6–8 % of the base's norm); one at half the base's norm
# or beyond (e.g. all zeros = 100 %, a few overflowed values: far more) is not a finetune of this base, and merging it
# would make noise, so it is refused at load.
MAX_RELATIVE_DISTANCE = 0.5
# Takes longer than the model's window are continued window by window (`engine.generate.generate_long`): each next
# window keeps the last half of the take as context and adds half a window of new music (audiocraft extends MusicGen's
# 30 s by 18 s with 12 s of context; half keeps two of nano's four bars at 120 BPM), and at most this many windows
# long (nano: 64 s, musicgen: 4 min; time and memory grow with the length).
CONTINUATION_STRIDE = 0.5
MAX_TAKE_WINDOWS = 8


@dataclass(frozen=True)
class Request:
    """What a user asks for. Checks that need no model happen here; the service adds the model's limits."""

    prompt: str
    num_clips: int = 4
    duration_s: float = 5.0
    seed: int | None = None  # None: a random seed, reported back in the result
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 250  # 0 = off
    top_p: float = 0.0  # 0 = off
    guidance: float = 1.0  # CFG γ; 1 = no CFG (half the cost)
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # "" = the unconditional branch
    plausibility: float = 0.0  # plausibility mask α (our addition; 0 = the paper's CFG): engine.sampling

    def __post_init__(self):
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise ValueError(f"{name} must be a string, got {type(text).__name__}")
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"{name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # e.g. a lone surrogate from a hand-made JSON request
                raise ValueError(f"{name} has a character that is not valid text at position {e.start}") from None
            object.__setattr__(self, name, " ".join(text.split()))
        check_number("num_clips", self.num_clips, integer=True)
        if not 1 <= self.num_clips <= MAX_CLIPS:
            raise ValueError(f"num_clips must be between 1 and {MAX_CLIPS}, got {self.num_clips}")
        check_number("duration_s", self.duration_s)
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.seed is not None:
            check_number("seed", self.seed, integer=True)
            if not 0 <= self.seed <= MAX_SEED:
                raise ValueError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature}")
        check_number("top_k", self.top_k, integer=True)
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        for name in ("top_p", "guidance", "plausibility"):
            check_number(name, getattr(self, name))
        CfgSetting(self.guidance, self.negative_prompt, self.plausibility, self.top_p)  # γ, α, top-p: engine.cfg

    @property
    def cfg(self) -> CfgSetting:
        """This request's guidance: γ, negative prompt, plausibility mask and top-p (γ = 1: none)."""
        return CfgSetting(self.guidance, self.negative_prompt, self.plausibility, self.top_p)

    def with_cfg(self, cfg: CfgSetting) -> "Request":
        """The same request under another CFG setting (the prompt, clips, length, seed and temperature kept)."""
        return dataclasses.replace(self, **cfg.request_fields())


@dataclass
class Generation:
    """Clips and how they were made."""

    audio: np.ndarray  # (N, channels, samples) float32, each clip at `loudness.TARGET_LUFS`, peaks ≤ −1 dBFS
    codes: torch.Tensor  # (N, K, T)
    sample_rate: int
    seed: int
    model: str  # which weights: a blend description or "base"
    request: Request
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: text, merge, prefill, sampling, codec, total
    step_times_s: list[float] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio per second of wall time, all clips counted."""
        return self.audio.shape[0] * self.duration_s / self.timings["total"]


def takes_audio(codec, codes: torch.Tensor) -> np.ndarray:
    """What a listener gets from codes (N, K, T): (N, channels, samples), each take at one loudness (`loudness`)."""
    return loudness.normalise(codec.decode(codes, keep_channels=True).numpy(), codec.sample_rate)


class BlendGate:
    """FIFO admission to a decoder whose weights depend on the blend (a readers–writer lock keyed by blend)."""

    def __init__(self, mixer: WeightMixer):
        self.mixer = mixer
        self.current: Blend | None = None
        self.active = 0
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._queue: list[int] = []

    @contextmanager
    def use(self, blend: Blend):
        """Hold the weights at `blend` for the duration of the block; yields the merge time (0 if none)."""
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                self._cond.wait_for(lambda: self._queue[0] == ticket and (self.active == 0 or self.current == blend))
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.pop(0)
            merge_s = 0.0
            if self.current != blend:
                self.current = None  # while merging (or if it fails) the weights are in no known state
                try:
                    merge_s = self.mixer.apply(blend)
                except BaseException:
                    self._cond.notify_all()
                    raise
                self.current = blend
            self.active += 1
            self._cond.notify_all()
        try:
            yield merge_s
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        """Hold the decoder with no request running (to change checkpoints); the next request re-merges."""
        with self._cond:
            self._cond.wait_for(lambda: self.active == 0 and not self._queue)
            self.current = None
            yield


class MusicService:
    """Generation for many concurrent users: base model (optionally with CFG) and merged θ_q/θ_d."""

    def __init__(self, model: MusicModel, max_duration_s: float | None = None, fuse: bool = False):
        """`max_duration_s`: the longest take users may ask for (default: the model's window; longer ones are
        continued window by window, up to MAX_TAKE_WINDOWS windows). `fuse`: concurrent requests for the same weights,
        length and CFG-ness are sampled in one call (`engine.fused`; where the C matmul kernel runs), each getting
        exactly the takes it gets alone, and every sampler call runs on the batcher's engine thread. For a server
        whose main thread opens no OpenMP pool (`engine.threads`: the app); a script sampling from its main thread
        is faster without."""
        self.model = model
        self.base = model.decoder
        self.serving = FastDecoder(copy.deepcopy(self.base.model), quantize=self.base.quantized)
        self.mixer = WeightMixer(self.serving)
        self.mixer.add("base", self.base.flat)  # by reference: the base decoder's own weights
        self.gate = BlendGate(self.mixer)
        self.window_s = model.max_duration_s  # what one pass of the decoder covers
        self.max_duration_s = min(max_duration_s or self.window_s, MAX_TAKE_WINDOWS * self.window_s)
        self._text_lock = threading.Lock()  # fast tokenizers are not safe to call concurrently
        fusable = fuse and self.base.device.type == "cpu" and kernels.has_few_row_linear()
        self.batcher = SamplerBatcher() if fusable else None

    @classmethod
    def from_sources(cls, base: str, theta_q: str | None = None, theta_d: str | None = None,
                     allow_download: bool = False, max_duration_s: float | None = None,
                     device: str = "cpu", dtype: str | torch.dtype = "fp32", renderer: str = "synth",
                     soundfont: str | None = None, fuse: bool = False) -> tuple["MusicService", list[str]]:
        """Build a service from paths/ids; returns it with notices for the user (e.g. missing endpoints).
        A missing θ_q or θ_d falls back to the base weights, shared by reference. `dtype` is the decoder weights'
        ("bf16" on a CPU: bf16 matmuls, fp32 activations, half the memory; see FastDecoder); every checkpoint
        is cast to it, so λ = 0 and 1 reproduce θ_q and θ_d as stored in that dtype. `renderer`, `soundfont`: how
        nano's notes sound (`ScoreCodec`; a real MusicGen's EnCodec is what it is)."""

        model = load_model(base, parse_dtype(dtype), device, allow_download)
        if isinstance(model.codec, ScoreCodec) and (renderer, soundfont) != (model.codec.renderer, None):
            model.codec = ScoreCodec(renderer=renderer, soundfont=soundfont)
        service = cls(model, max_duration_s, fuse)
        notices = []
        for name, source in (("q", theta_q), ("d", theta_d)):
            if source is None:
                service.mixer.add(name, service.base.flat)
                notices.append(f"No θ_{name} given: it is the base model, so λ only matters once both are loaded.")
            else:
                service.add_checkpoint(name, source)
        return service, notices

    def add_checkpoint(self, name: str, source) -> None:
        """Register a decoder checkpoint (e.g. "q" for θ_q, "d" for θ_d) for blending; waits for running requests."""
        if name == "base":
            raise ValueError("the name 'base' is reserved for the base model's weights")
        with self.gate.exclusive():
            self.mixer.add(name, source)
            distance = self.relative_distance(name)
            if not distance <= MAX_RELATIVE_DISTANCE:
                del self.mixer.endpoints[name]
                what = source if isinstance(source, (str, os.PathLike)) else f"checkpoint {name!r}"
                raise CheckpointError(f"{what}: its weights lie {distance:.3g}× the base's norm away from the base "
                                      f"(a finetune of this base stays within {MAX_RELATIVE_DISTANCE:g}×, the shipped "
                                      "ones within 0.08×): not a finetune of this base, or damaged; refusing it")

    def relative_distance(self, name: str) -> float:
        """‖θ_name − θ_base‖ / ‖θ_base‖ over the decoder's weights: how far a loaded checkpoint moved from the base."""
        theta, base = self.mixer.endpoints[name].float(), self.base.flat.float()
        return float(torch.linalg.vector_norm(theta - base) / torch.linalg.vector_norm(base))

    @property
    def checkpoints(self) -> list[str]:
        return sorted(self.mixer.endpoints)

    def generate_merged(self, request: Request, blend: Blend | float, **hooks) -> Generation:
        """Clips from the merged weights. A float is λ for (1−λ)·θ_q + λ·θ_d. `prefix=` codes (1, K, P) to continue
        (a take to extend, or the start its new endings keep)."""
        if not isinstance(blend, Blend):
            blend = Blend.lerp("q", "d", blend)
        missing = [n for n, _ in blend.parts if n not in self.mixer.endpoints]
        if missing:
            raise ValueError(f"checkpoint(s) {missing} not loaded; available: {self.checkpoints}")
        return self._generate(self.serving, request, blend.describe(), weights=self.gate.use(blend), **hooks)

    def generate_base(self, request: Request, **hooks) -> Generation:
        """Clips from the pristine base weights (the CFG side of an A/B comparison)."""
        return self._generate(self.base, request, "base", **hooks)

    def _generate(self, decoder: FastDecoder, req: Request, label: str, weights=None,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None, prefix: torch.Tensor | None = None,
                  tap: FrameTap | None = None) -> Generation:
        if req.duration_s > self.max_duration_s:
            raise ValueError(f"duration_s must be at most {self.max_duration_s:g} s for this model, "
                             f"got {req.duration_s}")
        return generate(self.model, decoder, req, label, weights, progress, cancel, self._text_lock, prefix,
                        self.batcher, tap)


def continuation(model: MusicModel) -> Continuation:
    """The model's window, and the new frames each next window adds (CONTINUATION_STRIDE of it). On nano each clip's
    context starts on one of its bar lines (16 of the 16ths its notes sit on, `engine.exact`): nano's grid is counted
    from a piece's first frame, and contexts cut mid-bar lost the beat (24 s takes read "no steady tempo" in 11 of 12
    clips whose first 8 s had one)."""
    window = model.num_frames(model.max_duration_s)
    bar = None
    if isinstance(model.codec, ScoreCodec):
        def bar(clip: torch.Tensor) -> int | None:
            sixteenth = exact.read(clip.cpu().numpy()).sixteenth
            return 16 * sixteenth if sixteenth else None
    return Continuation(window, max(1, round(window * CONTINUATION_STRIDE)), bar)


def generate(model: MusicModel, decoder: FastDecoder, req: Request, label: str, weights=None,
             progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
             text_lock: threading.Lock | None = None, prefix: torch.Tensor | None = None,
             batcher: SamplerBatcher | None = None, tap: FrameTap | None = None) -> Generation:
    """Clips for `req` from `decoder` (the base's, the service's merged one, or a student in training), with the text
    encoder and codec of `model`. `weights`: a context holding the decoder's weights (the blend gate) during sampling
    only; it yields the merge time. Text encoding (under `text_lock`) and audio decoding happen outside it. A take
    longer than the model's window, or one continuing `prefix` codes (1, K, P), is made window by window; a take of
    one window goes through `batcher` where there is one (sampled with the requests that share its weights). `tap`:
    one take's frames handed out while it is sampled (`engine.stream` turns them into audio)."""
    t_start = time.perf_counter()
    stop_if_cancelled(cancel, "before it started")  # a request stopped while it waited never starts
    notices = []
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    use_cfg = req.guidance > 1
    frames, steps = model.num_frames(req.duration_s), continuation(model)
    if batcher is not None:
        batcher.announce()  # a fused call starting now waits for this request's text
    try:
        with text_lock if text_lock is not None else contextlib.nullcontext():
            cond = model.encode_text([req.prompt])
            neg = model.encode_text([req.negative_prompt]) if use_cfg else None
    except BaseException:
        if batcher is not None:
            batcher.withdraw()
        raise
    if not req.prompt:
        notices.append("Empty prompt: generating unconditionally.")
    if cond.truncated[0] or (neg is not None and neg.truncated[0]):
        notices.append(f"Prompt truncated to {model.text_encoder.max_tokens} tokens.")
    t_text = time.perf_counter() - t_start
    if tap is not None:
        tap.begin()  # checked and encoded: the streamed take is about to be sampled
    generator = torch.Generator(device=decoder.device).manual_seed(seed)
    cfg = dict(neg=neg, guidance=req.guidance if use_cfg else None, plausibility=req.plausibility)
    params = SamplingParams(req.temperature, req.top_k, req.top_p)
    one_window = prefix is None and frames <= steps.window

    def alone(merge_s: float):
        if one_window:
            return generate_codes(decoder, cond, req.num_clips, frames, params, generator, progress=progress,
                                  cancel=cancel, tap=tap, **cfg), merge_s
        return generate_long(decoder, cond, req.num_clips, frames, params, generator, steps, prefix=prefix,
                             progress=progress, cancel=cancel, tap=tap, **cfg), merge_s

    if batcher is not None and one_window:  # fused with the requests for the same weights, length and CFG-ness
        job = FusedJob(cond=cond, num_samples=req.num_clips, sampling=params, generator=generator, progress=progress,
                       cancel=cancel, tap=tap, **cfg)
        out = batcher.sample((id(decoder), label, frames, use_cfg), decoder, frames, weights, job, announced=True)
        merge_s = job.merge_s
    elif batcher is not None:  # alone, on the engine thread
        out, merge_s = batcher.call(alone, weights, cancel, announced=True)
    else:
        with weights if weights is not None else contextlib.nullcontext() as merge_s:
            out, merge_s = alone(merge_s)
    if tap is not None:
        tap.finish(out.codes[tap.row])  # the streamed take is whole
    stop_if_cancelled(cancel, "before decoding")
    t = time.perf_counter()
    audio = takes_audio(model.codec, out.codes)
    t_codec = time.perf_counter() - t
    stop_if_cancelled(cancel, "after decoding")
    total = time.perf_counter() - t_start
    timings = dict(text=t_text, prefill=out.prefill_s, sampling=sum(out.step_times_s), codec=t_codec, total=total)
    if weights is not None:
        timings["merge"] = merge_s
    return Generation(audio, out.codes, model.sample_rate, seed, label, req, notices, timings, out.step_times_s)
