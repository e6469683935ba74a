"""Audio while it is made: one take's frames, handed out by the sampler as they are complete
(`engine.generate.FrameTap`), become audio chunks a player can start on long before the take is done.

Steps of `LiveTake.chunks` (on the listener's thread; the sampler's thread only hands codes over):
  1. wait until enough new frames are complete (FIRST_CHUNK_S of sound for the first chunk, so that it comes quickly;
     CHUNK_S for the next ones), or the take is done;
  2. render the frames so far (`Renderer`) and cut out the new sound that later frames can no longer change;
  3. bring it to the takes' loudness with a gain that follows the take so far (`StreamLevel`) and the takes' limiter.

What is sure: nano's renderers (`ScoreCodec`) are causal note by note (a note's sound before its end does not depend
on when it ends; the reverb only looks back), so the take so far is rendered whole, followed by NANO_PAD_S of rests
(a rendering fades its last 10 ms out, and the synthesiser's reverb needs a rendering longer than its 0.6 s tail to
convolve exactly), and all of it is what the finished take plays, sample for sample (to float rounding), except a
noise burst's grain (its random seed is the whole take's). A neural codec (EnCodec) is decoded over a window:
CODEC_CONTEXT_S of frames before the new ones (its LSTM and convolutions settle) and CODEC_HOLD_S held back (its
convolutions look ahead); what it streams is close to the finished take's decoding, not equal to it.

The finished takes are still decoded and normalised whole (`engine.service.takes_audio`): the stream is for
listening while they are made; the players and the files that follow hold the takes.
"""
from __future__ import annotations

import contextvars
import io
import threading
import time
from typing import Callable, Generator, Iterator, TypeVar

import numpy as np
import soundfile as sf
import torch

from engine import loudness, threads
from engine.generate import FrameTap
from engine.score_codec import REST, ScoreCodec

T = TypeVar("T")

FIRST_CHUNK_S = 0.25  # the first chunk: as soon as a quarter second is sure (what a listener waits for)
CHUNK_S = 1.0  # then a second at a time (fewer renders of the take so far; a player keeps a few seconds buffered)
LEAD_IN_S = 0.1  # silence before the music (see `LiveTake.play`)
LEAD_IN_WAIT_S = 2.0  # a request waits at most this long for the lead-in to go out (a listener gone: not for ever)
AHEAD_S = 3.0  # a chunk is made once the listener has less than this left to hear: the stream keeps pace with playback
# (rendering all of a fast model's take at once would take cores from its sampling), and a player buffers 4 s
PACE_S = 0.1  # how often a paced stream looks at the clock
TICK_S = 0.25  # after the last chunk, how often the stream's encoder is asked for what it has encoded
TAP_EVERY_S = 0.25  # the sampler hands frames over this often (a revert and a copy of one clip's codes)
NANO_PAD_S = 1.0  # rests after nano's take so far: its end's fade falls in them, and the reverb's 0.6 s tail fits
CODEC_CONTEXT_S = 2.0  # EnCodec's decoder: frames decoded before the new ones, so its LSTM state has settled
CODEC_HOLD_S = 0.2  # … and held back at the end (its non-causal convolutions look ahead)
LEVEL_WINDOW_S = 10.0  # the stream's gain follows the loudness of the last ten seconds
MAX_GAIN_DB = 30.0  # a near-silent start is not brought up to the target: at most +30 dB


class Renderer:
    """A codec's sound for a take's first f frames: `sure(codes (K, f), final)` → audio (C, n), the sound after what
    it handed out before that later frames cannot change (all the rest when `final`)."""

    def __init__(self, codec, frame_rate: float):
        self.codec, self.frame_rate = codec, frame_rate
        self.hop = round(codec.sample_rate / frame_rate)  # samples per frame
        whole = isinstance(codec, ScoreCodec)
        self.context = None if whole else round(CODEC_CONTEXT_S * frame_rate)  # None: render from the first frame
        self.pad = round(NANO_PAD_S * frame_rate) if whole else 0  # rests rendered after the frames so far
        self.hold = 0 if whole else round(CODEC_HOLD_S * frame_rate)
        self.done = 0  # samples handed out so far

    def sure(self, codes: torch.Tensor, final: bool) -> np.ndarray:
        frames = codes.shape[-1]
        end = frames * self.hop if final else max(0, frames - self.hold) * self.hop
        if end <= self.done:
            return np.zeros((0, 0), dtype=np.float32)
        first = 0 if self.context is None else max(0, self.done // self.hop - self.context)
        window = codes[:, first:]
        if self.pad and not final:
            window = torch.cat([window, window.new_full((window.shape[0], self.pad), REST)], dim=-1)
        audio = self.codec.decode(window[None], keep_channels=True)[0].numpy()
        chunk = audio[:, self.done - first * self.hop:end - first * self.hop]
        self.done += chunk.shape[-1]
        return chunk


class StreamLevel:
    """The stream at the takes' loudness (`loudness.TARGET_LUFS`): each chunk's gain is the one that brings the last
    LEVEL_WINDOW_S of the take so far to the target, moving linearly from the previous chunk's (no steps), then the
    takes' limiter (peaks ≤ −1 dBFS)."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.recent = np.zeros((0, 0), dtype=np.float32)
        self.gain_db: float | None = None

    def apply(self, chunk: np.ndarray) -> np.ndarray:
        keep = int(LEVEL_WINDOW_S * self.sample_rate)
        self.recent = chunk if self.recent.size == 0 else np.concatenate([self.recent, chunk], axis=-1)[:, -keep:]
        level = loudness.loudness(self.recent, self.sample_rate)
        target = self.gain_db if not np.isfinite(level) else min(loudness.TARGET_LUFS - level, MAX_GAIN_DB)
        target = 0.0 if target is None else target
        start = target if self.gain_db is None else self.gain_db
        self.gain_db = target
        ramp = 10 ** (np.linspace(start, target, chunk.shape[-1], dtype=np.float32) / 20)
        return loudness.limit(chunk * ramp[None, :], self.sample_rate).astype(np.float32)


def wav_bytes(chunk: np.ndarray, sample_rate: int) -> bytes:
    """(C, n) float audio as 16-bit WAV bytes (what Gradio's streamed audio reads without a decoder)."""
    buffer = io.BytesIO()
    sf.write(buffer, chunk.T, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class LiveTake:
    """One take streamed while it is sampled. Give `tap()` to the service (its `finish` says the take is whole); iterate
    `chunks()` on the listener's thread; `close()` once the request is over (a take not finished by then was stopped
    or failed: its stream ends)."""

    def __init__(self, codec, frame_rate: float, first_s: float = FIRST_CHUNK_S, chunk_s: float = CHUNK_S,
                 engine_thread: bool = False):
        """`engine_thread`: the service samples on an engine thread of its own (`engine.threads`), so the request's
        and the listener's threads compute on one core."""
        self.engine_thread = engine_thread
        self.renderer, self.level = Renderer(codec, frame_rate), StreamLevel(codec.sample_rate)
        self.sample_rate = codec.sample_rate
        self.first, self.next = round(first_s * codec.sample_rate), round(chunk_s * codec.sample_rate)
        self.frame_rate = frame_rate
        self._codes: torch.Tensor | None = None
        self._started: float | None = None  # when the first chunk went out
        self._state: str = "running"  # → "finished" or "abandoned"
        self._cond = threading.Condition()
        self._begun = threading.Event()  # the request is checked and about to sample
        self._lead_in_out = threading.Event()  # … and may (cleared by `play` until its lead-in is out)
        self._lead_in_out.set()

    def tap(self, row: int = 0) -> FrameTap:
        return FrameTap(self._receive, max(1, round(TAP_EVERY_S * self.frame_rate)), row, self._finish, self._begin)

    def _begin(self) -> None:
        """On the request's thread, once it is checked: wait (briefly) until `play` has sent the lead-in."""
        self._begun.set()
        self._lead_in_out.wait(LEAD_IN_WAIT_S)

    def _receive(self, codes: torch.Tensor) -> None:
        with self._cond:
            self._codes = codes
            self._cond.notify_all()

    def _finish(self, codes: torch.Tensor) -> None:
        with self._cond:
            self._codes, self._state = codes, "finished"
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self._state == "running":
                self._state = "abandoned"
            self._cond.notify_all()

    def _silence(self, seconds: float) -> bytes:
        channels = getattr(self.renderer.codec, "channels", 1)
        return wav_bytes(np.zeros((channels, max(1, round(seconds * self.sample_rate))), np.float32), self.sample_rate)

    def _ready(self, done: int) -> bool:
        if self._state != "running":
            return True
        wanted = self.first if done == 0 else self.next
        frames = 0 if self._codes is None else self._codes.shape[-1] - self.renderer.hold
        return frames * self.renderer.hop - done >= wanted and self._ahead(done) < AHEAD_S

    def _ahead(self, done: int) -> float:
        """Seconds of the stream not yet played, had playback started with the first chunk."""
        if self._started is None:
            return 0.0
        return done / self.sample_rate - (time.monotonic() - self._started)

    def play(self, work: Callable[[FrameTap], T], wrap: Callable[[bytes], object] = lambda chunk: chunk,
             ) -> Generator[object, None, T]:
        """Run `work(tap)` (a request that samples this take) on a thread of its own, in this thread's context (so
        Gradio's progress bar follows it), and yield the take's audio as WAV chunks (each through `wrap`) while it
        runs; returns what `work` returns, or raises what it raised (the stream then ends where it was)."""
        box: dict = {}

        def run():
            if self.engine_thread:
                threads.one_core()  # a request's thread (`engine.threads`)
            try:
                box["value"] = work(self.tap())
            except BaseException as e:  # noqa: BLE001 (raised again in the listener's thread)
                box["error"] = e
            finally:
                self.close()

        thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), name="request", daemon=True)
        self._lead_in_out.clear()
        thread.start()
        # a short silence first, once the request is checked and before it samples: Gradio starts the stream's encoder
        # on a stream's first chunk and a player polls a stream it found empty a second later, so the encoder should
        # be running, on cores not yet busy sampling, before the music is (a refused request streams nothing)
        while not self._begun.wait(PACE_S) and thread.is_alive():
            pass
        if self._begun.is_set():
            yield wrap(self._silence(LEAD_IN_S))
        self._lead_in_out.set()  # the lead-in is out (Gradio asks for the next chunk once it has encoded it): sample
        for chunk in self.chunks():
            yield wrap(wav_bytes(chunk, self.sample_rate))
        # Gradio's encoder hands a chunk's sound on when the next chunk comes; after the last one, ticks (half a
        # millisecond of silence each) bring it out while the request scores and writes its takes
        thread.join(TICK_S)
        while thread.is_alive():
            yield wrap(self._silence(1 / 2000))
            thread.join(TICK_S)
        if "error" in box:
            raise box["error"]
        return box["value"]

    def chunks(self) -> Iterator[np.ndarray]:
        """Audio (C, n) at the takes' loudness, in order, until the take is finished (its last sound included) or
        abandoned (stopped, failed: what was not yet sure is left out)."""
        if self.engine_thread:
            threads.one_core()  # the listener's thread renders beside the engine's (`engine.threads`)
        while True:
            with self._cond:  # 1. enough new frames (and the listener's buffer wants them), or the end
                while not self._cond.wait_for(lambda: self._ready(self.renderer.done), timeout=PACE_S):
                    pass
                codes, state = self._codes, self._state
            if state == "abandoned" or codes is None:
                return
            chunk = self.renderer.sure(codes, final=state == "finished")  # 2. the new sound that is sure
            if chunk.size:
                self._started = self._started or time.monotonic()
                yield self.level.apply(chunk)  # 3. at the takes' level
            if state == "finished":
                return
