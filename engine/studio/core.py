"""The Studio: the app's state shared by all sessions (models, scorers, ratings) and what each button does, free of
Gradio, so that tests drive it without a browser.

Each browser session's settings (λ included) travel with its own requests, so users never share a λ, and the
engine's blend gate makes every generation use exactly the weights its own λ asks for. Merge modes come from
`engine.modes`, CFG settings are `engine.cfg.CfgSetting`s.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine import exact, threads
from engine.cfg import PAPER_CFG, CfgSetting
from engine.checkpoint import CheckpointError
from engine.generate import FrameTap, GenerationCancelled, stop_if_cancelled
from engine.heard import hear, played
from engine.merge import Blend
from engine.modes import MergeMode, available_modes, merge_mode
from engine.ratings import VOTES, RatingStore
from engine.score_codec import ScoreCodec
from engine.scorers import Scorers, SetScores
from engine.service import Generation, MusicService, Request
from engine.stream import LiveTake
from engine.studio import inputs
from engine.studio.files import (
    MAX_OUTPUT_FOLDERS,
    OUTPUTS_PREFIX,
    own_temp_folder,
    prune,
    write_pair_wavs,
    write_set_wavs,
)
from engine.studio.web import ClientAddress

LOG = logging.getLogger("cfg_distill.app")
MAX_PAIR_CLIPS = 4
MAX_SESSIONS = 256  # sessions whose state the server keeps (Gradio's and the Stop times here); older ones are dropped
MAX_PAIRS = 10_000  # blind pairs waiting for a vote; the oldest are forgotten
VOTES_PER_MINUTE = 12  # per client address: hearing two sets of takes before voting takes a person ≥ 10 s, so 12 a
# minute leaves room for every honest listener behind one address and caps a script at 12 (it did 80 as new raters)
DEFAULT_SECONDS = 5.0  # the page's take length when no fronts say how long theirs were


# a rater identity kept in the browser (`gr.BrowserState`): one this server issued has this shape; anything else that
# arrives (a hand-edited storage, an old format) is replaced by a new one
RATER_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def rater_id(stored) -> str:
    """The browser's rater identity: the stored one if it has the shape of one this server issues, else a new one."""
    return stored if isinstance(stored, str) and RATER_ID.match(stored) else secrets.token_urlsafe(16)


def rater_session(stored, session: str) -> str:
    """Who a vote is from: the browser's rater identity (the same across page loads and restarts), or the Gradio
    session where the browser has none (an API client)."""
    return f"browser:{stored}" if isinstance(stored, str) and RATER_ID.match(stored) else session


class Allowance:
    """At most `per_minute` events per key in any 60 s (a sliding window), for the most recent MAX_SESSIONS keys."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute, self.clock = inputs.whole("per_minute", per_minute), clock
        if self.per_minute < 1:
            raise ValueError(f"per_minute must be ≥ 1, got {per_minute}")
        self._seen: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Counts one event for `key`: 0 when allowed, else the seconds until the next one would be."""
        now = self.clock()
        with self._lock:
            times = self._seen.pop(key, None) or collections.deque()
            while times and now - times[0] >= self.WINDOW_S:
                times.popleft()
            self._seen[key] = times
            while len(self._seen) > MAX_SESSIONS:
                self._seen.popitem(last=False)
            if len(times) >= self.per_minute:
                return self.WINDOW_S - (now - times[0])
            times.append(now)
            return 0.0

    def give_back(self, key: str) -> None:
        """Uncounts the last event of `key` (it did not happen: e.g. the vote could not be stored)."""
        with self._lock:
            if self._seen.get(key):
                self._seen[key].pop()


@dataclass
class Result:
    """What one press of Generate produced."""
    merged: Generation
    base: Generation | None = None
    scores: dict[str, SetScores] = field(default_factory=dict)
    exact: dict[str, ExactScores] = field(default_factory=dict)  # nano only: read from the clips' tokens
    files: list[str] = field(default_factory=list)
    label: str = ""
    base_label: str = ""
    played: dict[str, list[dict]] = field(default_factory=dict)  # nano: what each clip played (engine.heard.played)

    def sets(self) -> list[tuple[str, str, Generation | None]]:
        """(key, title, generation) of the trained model's set and the CFG comparison's (None when off)."""
        return [("merged", self.label, self.merged), ("base", self.base_label, self.base)]


@dataclass(frozen=True)
class ExactScores:
    """Exact metrics of one set of nano clips for its prompt (`engine.exact`)."""

    quality: list[float | None]  # per clip: 5 · adherence + clean, None if the prompt has no checkable request
    adherence: list[float | None]
    clean: list[float]
    diversity: float  # mean pairwise event distance
    requests: list[str]  # what the prompt asks for that the tokens can check
    unchecked: list[str]  # words the tokens cannot check (moods, a mode without a key)

    @property
    def mean_quality(self) -> float | None:
        return None if self.quality[0] is None else float(np.mean(self.quality))

    @classmethod
    def of(cls, codes: np.ndarray, prompt: str) -> ExactScores:
        """Checked against what nano heard in the prompt, in its own words (`engine.heard`: "130 bpm" as 120 BPM,
        "lullaby" as calm, slow, bells, no drums), as what each take played (`engine.heard.played`) is."""
        checked = hear(prompt).rewritten() if prompt else ""
        scores = [exact.score_clip(c, checked) for c in codes]
        return cls([s.quality for s in scores], [s.adherence for s in scores], [s.clean for s in scores],
                   exact.event_diversity(codes), list(scores[0].met), exact.unchecked(checked))


@dataclass(frozen=True)
class Takes:
    """What a set of takes was made of, kept per browser session so that one take can be continued or given new
    endings: the trained model's codes (N, K, T) and request, and the CFG comparison's, when it ran."""

    merged: tuple[torch.Tensor, Request]
    base: tuple[torch.Tensor, Request] | None = None

    @classmethod
    def of(cls, r: Result) -> Takes:
        return cls((r.merged.codes, r.merged.request), None if r.base is None else (r.base.codes, r.base.request))


@dataclass(frozen=True)
class System:
    """A way of generating that the blind A/B compares: the base's weights (blend None) or a blend, with CFG."""

    label: str  # display only
    blend: Blend | None = None
    cfg: CfgSetting | None = None  # None: no guidance


def ab_systems(models: list[str], teacher: CfgSetting = PAPER_CFG) -> list[System]:
    """The blind A/B's systems: each merge mode's (`MergeMode.ab_systems`), the base, the base with the chosen
    teacher's CFG and with the paper's; modes without λ (the soup) last."""
    modes = available_modes(models)
    out = [System(label, blend) for m in modes if m.uses_lambda for label, blend in m.ab_systems(models)]
    out += [System("base")] + [System(cfg.label, cfg=cfg) for cfg in dict.fromkeys((teacher, PAPER_CFG))]
    return out + [System(label, blend) for m in modes if not m.uses_lambda for label, blend in m.ab_systems(models)]


class StopSignal:
    """Whether the session pressed Stop after this request was submitted: a Stop reaches a request that is still
    queued (it never starts) as well as one that is sampling or decoding, and never a later request."""

    def __init__(self, stops: dict[str, float], session: str, submitted: float):
        self._stops, self.session, self.submitted = stops, session, submitted

    def is_set(self) -> bool:
        return self._stops.get(self.session, -math.inf) >= self.submitted


def explain_failure(what: str, error: BaseException) -> tuple[str, str]:
    """(kind, message) of a failed request, with one log line: "stopped" (the user's Stop), "rejected" (bad input or
    a bad checkpoint: the message says what) or "failed" (a bug: named, without internals). The one place the app
    turns exceptions into words."""
    if isinstance(error, GenerationCancelled):
        LOG.info("%s: %s by the user", what, error)
        return "stopped", "Stopped."
    if isinstance(error, (ValueError, CheckpointError)):
        LOG.info("%s: rejected: %s", what, error)
        return "rejected", str(error)
    LOG.error("%s: failed: %s: %s", what, type(error).__name__, error)
    return "failed", f"Something went wrong ({type(error).__name__}); the server log has the details."


class Studio:
    """The app's state shared by all sessions (models, scorers, ratings) and its callbacks, free of Gradio."""

    def __init__(self, service: MusicService, scorers: Scorers | None = None, ratings: RatingStore | None = None,
                 fronts: dict | None = None, banner: list[str] | None = None, out_dir: str | Path | None = None,
                 soup: list[str] | None = None, fronts_exact: dict | None = None, teacher: CfgSetting = PAPER_CFG,
                 concurrency: int = 2, keep_outputs: int = MAX_OUTPUT_FOLDERS, measured: dict | None = None,
                 votes_per_minute: int = VOTES_PER_MINUTE, addresses: ClientAddress = ClientAddress()):  # noqa: B008
        self.service, self.scorers, self.ratings = service, scorers or Scorers(), ratings
        self.fronts, self.fronts_exact, self.banner = fronts or {}, fronts_exact or {}, banner or []
        self.teacher = teacher
        self.measured = measured or {}  # how the fronts were measured (prompts, clips, seconds)
        self.models = ""  # which models are loaded, for the page (make_studio fills it)
        self.streams = False  # the first take plays while it is made (make_studio: where Gradio can encode it)
        self.readable = isinstance(service.model.codec, ScoreCodec)  # nano: exact metrics from the tokens
        self.trained = ["q", "d", *(soup or [])]  # the trained checkpoints the merge modes blend
        # a folder of this process's own unless given, removed when it exits
        self.out_dir = Path(out_dir) if out_dir is not None else own_temp_folder(OUTPUTS_PREFIX)
        self.keep_outputs = inputs.whole("keep_outputs", keep_outputs)
        self.running = 0  # jobs running the models now
        self.concurrency = inputs.whole("concurrency", concurrency)
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
        self._stops: collections.OrderedDict[str, float] = collections.OrderedDict()  # session -> last Stop
        self._pairs: collections.OrderedDict[str, dict] = collections.OrderedDict()  # token -> pair awaiting a vote
        self._rated: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()  # token -> (session,
        # reveal) of pairs already rated
        self._votes = Allowance(votes_per_minute)  # per client address
        self.addresses = addresses  # how a request's client address is read (behind proxies or not)
        self._lock = threading.Lock()
        self._systems = {s.label: s for s in ab_systems(self.trained, teacher)}

    # ------------------------------------------------------------------ generation
    @property
    def default_seconds(self) -> float:
        """The length the page starts at: the fronts' (so that the quality–diversity plot shows them), else 5 s."""
        seconds = float(self.measured.get("seconds", DEFAULT_SECONDS))
        return min(max(seconds, 0.5), self.service.max_duration_s)

    @property
    def modes(self) -> list[MergeMode]:
        """The merge modes the loaded checkpoints allow (`engine.modes`), in registry order."""
        return available_modes(self.trained)

    def mode(self, name) -> MergeMode:
        """A mode by its key or an earlier API value ("θ_q ↔ θ_d"); unknown or unavailable ones are refused."""
        return merge_mode(name, self.modes)

    def blend(self, mode, lam) -> Blend:
        """The blend `mode` makes at λ. λ is checked even where the mode ignores it (the soup): a number, or None."""
        m = self.mode(mode)
        lam = None if lam is None and not m.uses_lambda else inputs.real("λ", lam)
        return m.blend(lam if m.uses_lambda else None, self.trained)

    def describe(self, mode, lam) -> str:
        """What the slider asks for, without merging: "λ = 0.50 (0.5·q + 0.5·d)" (the merge line on page load)."""
        blend = self.blend(mode, lam)
        return f"λ = {float(lam):.2f} ({blend.describe()})" if self.mode(mode).uses_lambda else blend.describe()

    def merge(self, mode, lam) -> str:
        """Merge now (on slider release) so that the next generation starts at once; returns the merge time."""
        what = self.describe(mode, lam)
        with self.service.gate.use(self.blend(mode, lam)) as merge_s:
            pass
        return f"{what}: merged in {merge_s * 1000:.1f} ms." if merge_s else f"{what}: already merged."

    def live_take(self) -> LiveTake | None:
        """A take to stream while it is sampled, where the page streams (else None)."""
        model = self.service.model
        return LiveTake(model.codec, model.frame_rate, engine_thread=self.service.batcher is not None) \
            if self.streams else None

    def stop_signal(self, session: str, submitted: float | None = None) -> StopSignal:
        """The signal of a request of `session` submitted at `submitted` (time.monotonic; default now)."""
        return StopSignal(self._stops, inputs.text("session", session),
                          time.monotonic() if submitted is None else submitted)

    def stop(self, session: str) -> str:
        """Stop every request this session has submitted so far, queued or running."""
        with self._lock:
            self._stops[inputs.text("session", session)] = time.monotonic()
            self._stops.move_to_end(session)
            while len(self._stops) > MAX_SESSIONS:  # bounded: the oldest sessions' Stop times are forgotten
                self._stops.popitem(last=False)
        return "Stopped."

    def generate(self, prompt: str, num_clips, duration, seed, temperature, mode, lam, compare: bool, guidance,
                 negative: str, plausibility=0.0, top_p=0.0, session: str = "", progress=None,
                 submitted: float | None = None, tap: FrameTap | None = None) -> Result:
        """New takes (and the CFG side's, with `compare`); `tap`: the first take of the trained model's, handed out
        while it is sampled (`engine.stream`)."""
        cancel = self.stop_signal(session, submitted)
        # 1. every argument checked before any work (the CFG side too: the same prompt and seed)
        seed = inputs.seed(seed)
        req = Request(inputs.text("prompt", prompt), inputs.whole("clips", num_clips),
                      inputs.real("duration", duration), seed, inputs.real("temperature", temperature))
        # the CFG side is checked whether or not the comparison runs (an unused field is no place for garbage)
        cfg = CfgSetting(inputs.real("γ", guidance), inputs.text("negative prompt", negative),
                         inputs.real("α", plausibility), inputs.real("top-p", top_p))
        req.with_cfg(cfg)  # the negative prompt as a request's text is checked
        cfg = cfg if inputs.flag("compare", compare) else None
        blend, m = self.blend(mode, lam), self.mode(mode)
        # 2. the clips, then their scores and files
        with self._job("generate", req.num_clips * (1 if cfg is None else 2)):
            result = self._clips(req, cfg, blend, m.caption(lam), cancel, progress, tap)
            return self._finish(result, m.file_tag(lam), cancel)

    def vary(self, takes: Takes | None, take, from_s, seconds, num_clips, seed, temperature, mode, lam,
             session: str = "", progress=None, submitted: float | None = None,
             tap: FrameTap | None = None) -> Result:
        """New takes that keep the start of take `take` (1 = the first) of `takes`: its first `from_s` seconds (None or
        blank: all of it, so the take is continued) and go on to `seconds`, `num_clips` different ones. The trained
        model's take goes on with the blend the slider asks for now; where the comparison made the set, the CFG take
        of the same number goes on beside it with its own CFG setting. Takes longer than the model's window are made
        window by window. `tap`: the first new take of the trained model's, handed out while it is sampled."""
        cancel = self.stop_signal(session, submitted)
        if takes is None:
            raise ValueError("make some takes first, then continue one of them")
        codes, made = takes.merged
        seed, n = inputs.seed(seed), inputs.whole("take", take)
        if not 1 <= n <= codes.shape[0]:
            raise ValueError(f"take must be between 1 and {codes.shape[0]}, got {n}")
        length = codes.shape[-1] / self.service.model.frame_rate
        start = inputs.seconds("from", from_s, default=length)
        if not 0 < start <= length:
            raise ValueError(f"'from' must be a time inside take {n} (0 … {length:g} s), got {start:g}")
        req = Request(made.prompt, inputs.whole("clips", num_clips), inputs.real("length", seconds), seed,
                      inputs.real("temperature", temperature))
        if req.duration_s <= start:
            raise ValueError(f"the new takes must be longer than the {start:g} s they keep")
        keep = self.service.model.num_frames(start)
        blend, m = self.blend(mode, lam), self.mode(mode)
        what = "continued" if start == length else f"new endings from {start:g} s"
        with self._job("vary", req.num_clips * (1 if takes.base is None else 2)):
            result = Result(self.service.generate_merged(req, blend, prefix=codes[n - 1:n, :, :keep], cancel=cancel,
                                                         tap=tap), label=f"{m.caption(lam)} · take {n} {what}")
            if takes.base is not None:
                base_codes, base_req = takes.base
                result.base = self.service.generate_base(req.with_cfg(base_req.cfg), cancel=cancel,
                                                         prefix=base_codes[n - 1:n, :, :keep])
                result.base_label = f"{base_req.cfg.label} · take {n} {what}"
            return self._finish(result, f"{m.file_tag(lam)}-take{n}-from{start:g}s", cancel)

    def _clips(self, req: Request, cfg: CfgSetting | None, blend: Blend, label: str, cancel: StopSignal,
               progress, tap: FrameTap | None = None) -> Result:
        hook = (lambda desc: (lambda i, n: progress(i / n, desc=desc))) if progress else (lambda desc: None)
        result = Result(self.service.generate_merged(req, blend, progress=hook("merged model"), cancel=cancel,
                                                     tap=tap), label=label)
        if cfg is not None:
            result.base = self.service.generate_base(req.with_cfg(cfg), progress=hook("base + CFG"), cancel=cancel)
            result.base_label = result.base.request.cfg.label
        return result

    def _finish(self, result: Result, tag: str, cancel: StopSignal) -> Result:
        """Score the clips, then (unless stopped meanwhile: no files, nothing returned) write them."""
        self._score(result)
        stop_if_cancelled(cancel, "after scoring")
        result.files = self._write_wavs(result, tag)
        return result

    def _score(self, result: Result) -> None:
        prompt = result.merged.request.prompt
        for key, _, gen in result.sets():
            if gen is not None and (self.scorers.has_diversity or self.scorers.has_quality or self.scorers.clap):
                result.scores[key] = self.scorers.score(gen.audio, gen.sample_rate, prompt)
            if gen is not None and self.readable:
                codes = gen.codes.numpy()
                result.exact[key] = ExactScores.of(codes, prompt)
                result.played[key] = [played(c, prompt) for c in codes]

    @contextlib.contextmanager
    def _job(self, what: str, clips: int):
        """Count the jobs running the models at once (all endpoints together); one log line per finished job. Where
        the engine samples on its own thread, this request's thread computes on one core (`engine.threads`)."""
        if self.service.batcher is not None:
            threads.one_core()
        with self._lock:
            self.running += 1
            at_once = self.running
        t = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
        LOG.info("%s: %d clips in %.2f s; %d job(s) running at its start (limit %d)", what, clips,
                 time.perf_counter() - t, at_once, self.concurrency)

    def _new_folder(self, name: str) -> Path:
        """An output folder for one request's files, the oldest beyond `keep_outputs` pruned."""
        folder = self.out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        prune(self.out_dir, self.keep_outputs, spare=folder)
        return folder

    def _write_wavs(self, result: Result, tag: str) -> list[str]:
        folder = self._new_folder(f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
        return write_set_wavs(folder, result, tag)

    # ------------------------------------------------------------------ blind A/B
    def systems(self) -> list[str]:
        """The A/B systems' labels (display only: `system` maps a label to its settings)."""
        return list(self._systems)

    def system(self, label: str) -> System:
        if not isinstance(label, str) or label not in self._systems:
            raise ValueError(f"unknown system {label!r}; choose from {self.systems()}")
        return self._systems[label]

    def _generate_system(self, system: System, req: Request) -> Generation:
        req = req.with_cfg(system.cfg or CfgSetting(1.0))
        if system.blend is None:
            return self.service.generate_base(req)
        return self.service.generate_merged(req, system.blend)

    def new_pair(self, prompt: str, system_1: str, system_2: str, num_clips=2, duration=5.0, seed=None):
        """Two sets, same prompt and seed, in a random hidden order. Returns (token, set A, set B)."""
        self.system(system_1), self.system(system_2)  # both known, before any work
        if system_1 == system_2:
            raise ValueError("choose two different systems to compare")
        n = inputs.whole("clips", num_clips)
        if not 1 <= n <= MAX_PAIR_CLIPS:
            raise ValueError(f"clips per set must be between 1 and {MAX_PAIR_CLIPS}, got {n}")
        seed = inputs.seed(seed)
        req = Request(inputs.text("prompt", prompt), n, inputs.real("duration", duration), seed)
        order = [system_1, system_2]
        if secrets.randbelow(2):
            order.reverse()
        with self._job("new_pair", 2 * n):
            sets = [self._generate_system(self.system(s), req) for s in order]
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._pairs[token] = dict(prompt=req.prompt, seed=seed, a=order[0], b=order[1])
            while len(self._pairs) > MAX_PAIRS:
                self._pairs.popitem(last=False)
        return token, sets[0], sets[1]

    def write_pair(self, token: str, a: Generation, b: Generation) -> list[str]:
        """WAVs of a blind pair, named A1…, B1… so that nothing tells the systems apart."""
        return write_pair_wavs(self._new_folder(f"pair-{token}"), a, b)

    def rate(self, token: str, quality: str, diversity: str, session: str = "", client: str = "") -> str:
        """Store a vote on a pair made by `new_pair`; returns which system was which. Idempotent for the session that
        rated: the same token again (a double click) gets the same reveal and stores nothing. A failed store keeps
        the pair open, so the vote can be sent again. A client address votes at most `votes_per_minute` times a
        minute (a session is a made-up identity; an address costs more to change)."""
        if self.ratings is None:
            raise ValueError("ratings are not enabled on this server")
        for name, vote in (("quality", quality), ("diversity", diversity)):
            if not isinstance(vote, str) or vote not in VOTES:
                raise ValueError(f"choose A, B or tie for {name}")
        if not isinstance(token, str) or not token:
            raise ValueError("make a pair first")
        with self._lock:
            if token not in self._pairs:
                rated = self._rated.get(token)
                if rated is not None and rated[0] == session:
                    return rated[1]
                raise ValueError("this pair was already rated or has expired: make a new pair")
            wait = self._votes.take(client)
            if wait:
                raise ValueError(f"too many votes from this address in the last minute (at most "
                                 f"{self._votes.per_minute}): this pair stays open, vote again in {math.ceil(wait)} s")
            pair = self._pairs.pop(token)
            reveal = f"Thanks! A was **{pair['a']}**, B was **{pair['b']}**."
            self._rated[token] = (session, reveal)  # a second click while this one stores gets the same answer
            while len(self._rated) > MAX_PAIRS:
                self._rated.popitem(last=False)
        try:
            self.ratings.add(pair["prompt"], pair["seed"], pair["a"], pair["b"], quality, diversity, session)
        except BaseException:
            with self._lock:  # not stored: the pair stays open for another try
                self._votes.give_back(client)
                self._rated.pop(token, None)
                self._pairs[token] = pair
            raise
        return reveal

    def results_table(self) -> list[list]:
        return self.ratings.table() if self.ratings is not None else []

    def export_ratings(self) -> str:
        """The ratings as CSV, in an output folder of its own (pruned with the takes': exports do not pile up)."""
        if self.ratings is None:
            raise ValueError("ratings are not enabled on this server")
        folder = self._new_folder(f"export-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
        path = folder / "ratings.csv"
        path.write_text(self.ratings.export_csv())
        return str(path)
