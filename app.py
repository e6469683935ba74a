"""Gradio app: steer quality ↔ diversity with λ, A/B the merged model against the base model with CFG, rate blind.

UI only: every model operation goes through `engine` (`MusicService` for generation and merging, `Scorers` for
diversity and quality, `RatingStore` for blind ratings). The callbacks live in `Studio`, a plain class that the
tests drive without a browser; `build_ui` wires them to components. Each browser session's settings (λ included)
travel with its own requests, so users never share a λ, and the engine's blend gate makes every generation use
exactly the weights its own λ asks for.
"""
# (no `from __future__ import annotations` here: Gradio finds the gr.Request parameter of a callback by its evaluated
# annotation, and a string annotation hands it the gr.Progress instead)
import argparse
import atexit
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from engine import decoder, exact, kernels
from engine.checkpoint import CheckpointError, is_signed
from engine.figures import diversity_heatmap, load_front_settings, load_fronts, quality_diversity_plot
from engine.generate import GenerationCancelled, stop_if_cancelled
from engine.heard import KIT_NAMES, hear, played, world_markdown
from engine.merge import Blend
from engine.model import is_nano_folder
from engine.ratings import TABLE_HEADERS, VOTES, RatingStore
from engine.score_codec import ScoreCodec
from engine.scorers import Scorers, SetScores
from engine.service import (
    DEFAULT_NEGATIVE_PROMPT,
    MAX_CLIPS,
    MAX_PROMPT_CHARS,
    Generation,
    MusicService,
    Request,
)
from engine.service import check_number as _number

LOG = logging.getLogger("cfg_distill.app")
ROOT = Path(__file__).parent
WEIGHTS = ROOT / "weights"
EXAMPLES = ["Rock song.", "calm piano", "upbeat techno with a driving kick",
            "A dreamy ambient piece with pad and bells",
            "jazz trio, walking bass, brushed drums", "sad hip hop beat with piano", "Bad audio quality."]
MODES = {"θ_q ↔ θ_d": ("q", "d"), "θ_q ↔ base": ("q", "base")}
SOUP = "uniform soup"
PRESETS = {"Safest (λ = 0)": 0.0, "Balanced (λ = 0.5)": 0.5, "Most varied (λ = 1)": 1.0}
ABOUT = """\
**What this is.** A text-to-music model normally needs *classifier-free guidance* (CFG) to follow a prompt well: each
note is computed twice, with and without the prompt, and pushed away from the second. That doubles the cost and makes
the takes of one prompt sound alike. Following [Diversity-Rewarded CFG Distillation](https://arxiv.org/abs/2410.06084)
(Cideron et al., ICLR 2025), we train the guidance *into* the weights (the **quality model θ_q**), train a second
model that is also rewarded for making the takes of a prompt differ (the **diversity model θ_d**), and let you blend
the two with one slider (λ): the weights are averaged, (1 − λ)·θ_q + λ·θ_d, at no extra cost per note.
"""
ABOUT_NANO = """\
The model here is *MusicGen-nano*, a small model trained offline on a procedural corpus whose notes can be read back
exactly, so the app can tell you what each take played; the same code serves a real MusicGen on a GPU (README).
"""
# the merge modes in a musician's words; the technical name follows in brackets (the API takes the technical name)
MODE_LABELS = {"θ_q ↔ θ_d": "Safe ↔ varied takes (θ_q ↔ θ_d)", "θ_q ↔ base": "Safe ↔ original model (θ_q ↔ base)",
               SOUP: "Average of all trained models (uniform soup)"}
LAMBDA_HELP = {"θ_q ↔ θ_d": "0 = the quality model θ_q (safest takes), 1 = the diversity model θ_d (most varied takes)",
               "θ_q ↔ base": "0 = the quality model θ_q, 1 = the original base model (no distillation)",
               SOUP: "not used: the soup averages θ_q, θ_d and the β models equally"}
MAX_PAIR_CLIPS = 4
MAX_OUTPUT_FOLDERS = 64  # newest generations whose WAVs stay here (each ≤ 16 clips × 10 s × 32 kB/s = 5 MB for nano)
MAX_SESSIONS = 256  # sessions whose state the server keeps (Gradio's and the Stop times here); older ones are dropped


def _shipped(name: str) -> str | None:
    path = WEIGHTS / name
    return str(path) if path.exists() else None


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # models (defaults: the shipped nano weights)
    p.add_argument("--base", default=env("MUSIC_BASE"),
                   help="base model: a nano folder, a local MusicGen folder, a hub id (facebook/musicgen-small), or "
                        "'debug' (tiny random model). Default: weights/nano, else 'debug'.")
    p.add_argument("--theta-q", default=env("MUSIC_THETA_Q"),
                   help="quality decoder checkpoint (default: weights/theta_q)")
    p.add_argument("--theta-d", default=env("MUSIC_THETA_D"),
                   help="diversity decoder checkpoint (default: weights/theta_d)")
    p.add_argument("--soup", nargs="*", default=(env("MUSIC_SOUP") or "").split(",") if env("MUSIC_SOUP") else None,
                   help="more decoder checkpoints (e.g. β = 5, 10) for the uniform soup with θ_q and θ_d "
                        "(default with the shipped nano: weights/theta_b15; pass --soup with no path for none)")
    p.add_argument("--embedding", default=env("MUSIC_EMBEDDING"),
                   help="diversity embedding E (default: weights/embedding)")
    p.add_argument("--quality", default=env("MUSIC_QUALITY"), help="quality scorer (default: weights/quality)")
    p.add_argument("--clap", default=env("MUSIC_CLAP"), help="a ClapModel for adherence on real MusicGen audio")
    p.add_argument("--teacher", default=env("MUSIC_TEACHER"),
                   help="the CFG setting the comparison starts from (teacher.json of training.teacher_sweep; default "
                        "with the shipped nano: the chosen teacher; otherwise the paper's γ = 3)")
    p.add_argument("--fronts", default=env("MUSIC_FRONTS", str(WEIGHTS / "eval" / "fronts.json")),
                   help="precomputed quality–diversity fronts (from training.evaluate)")
    p.add_argument("--allow-download", action="store_true", default=bool(env("MUSIC_ALLOW_DOWNLOAD")),
                   help="let transformers download hub checkpoints (off by default: everything runs offline)")
    p.add_argument("--device", default=env("MUSIC_DEVICE"), help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=env("MUSIC_DTYPE", "fp32"), choices=["fp32", "bf16", "fp16"],
                   help="decoder weights: bf16 halves memory and is faster on CPUs with AVX-512 BF16 or AMX "
                        "(activations stay fp32 on a CPU; README, Benchmarks); fp32 reproduces the shipped figures")
    # serving
    p.add_argument("--max-duration", type=float, default=float(env("MUSIC_MAX_DURATION", 10)),
                   help="longest clip a user may ask for, in seconds")
    p.add_argument("--ratings-db", default=env("MUSIC_RATINGS_DB"),
                   help="SQLite file of blind ratings (default: ~/.local/share/cfg-distill/ratings.sqlite)")
    p.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--concurrency", type=int, default=2, help="generations running at once")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more are refused")
    p.add_argument("--keep-outputs", type=int, default=MAX_OUTPUT_FOLDERS,
                   help="newest generations whose WAV folders stay on disk (older ones are deleted)")
    p.add_argument("--file-lifetime", type=int, default=int(env("MUSIC_FILE_LIFETIME", 3600)),
                   help="seconds Gradio keeps the files it served (clips, images); checked every sixth of that")
    p.add_argument("--monitoring", action="store_true", default=bool(env("MUSIC_MONITORING")),
                   help="Gradio's monitoring dashboard (off by default: it answers without a login)")
    return p.parse_args(argv)


@dataclass
class Result:
    """What one press of Generate produced."""
    merged: Generation
    base: Generation | None = None
    scores: dict[str, SetScores] = field(default_factory=dict)
    exact: dict[str, "ExactScores"] = field(default_factory=dict)  # nano only: read from the clips' tokens
    files: list[str] = field(default_factory=list)
    label: str = ""
    base_label: str = ""
    played: dict[str, list[dict]] = field(default_factory=dict)  # nano: what each clip played (engine.heard.played)


@dataclass(frozen=True)
class CfgSetting:
    """A CFG setting: γ, negative prompt ("" = unconditional), plausibility mask α and top-p after guidance (0 = off:
    the paper's CFG)."""

    guidance: float = 3.0
    negative: str = DEFAULT_NEGATIVE_PROMPT
    plausibility: float = 0.0
    top_p: float = 0.0

    @property
    def label(self) -> str:
        cut = (f" α={self.plausibility:g}" if self.plausibility else "") + (f" top-p={self.top_p:g}"
                                                                              if self.top_p else "")
        return f"base + CFG γ={self.guidance:g}{cut}{'' if self.negative else ' unconditional'}"


PAPER_CFG = CfgSetting()


def load_teacher(path: str | Path | None) -> CfgSetting:
    """The CFG teacher chosen by measurement (`training.teacher_sweep`'s teacher.json); the paper's CFG without one."""
    if not path or not Path(path).exists():
        return PAPER_CFG
    try:
        t = json.loads(Path(path).read_text())
        return CfgSetting(float(t["guidance"]), str(t["negative_prompt"]), float(t["plausibility"]),
                          float(t.get("top_p", 0.0)))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a teacher file ({e})") from None


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
    def of(cls, codes: np.ndarray, prompt: str) -> "ExactScores":
        scores = [exact.score_clip(c, prompt) for c in codes]
        return cls([s.quality for s in scores], [s.adherence for s in scores], [s.clean for s in scores],
                   exact.event_diversity(codes), list(scores[0].met), exact.unchecked(prompt))


@dataclass(frozen=True)
class System:
    """A way of generating that the blind A/B compares: the base's weights (blend None) or a blend, with CFG."""

    label: str  # display only
    blend: Blend | None = None
    guidance: float = 1.0
    negative: str = DEFAULT_NEGATIVE_PROMPT
    plausibility: float = 0.0
    top_p: float = 0.0


def ab_systems(with_soup: bool, soup: list[str], teacher: CfgSetting = PAPER_CFG) -> list[System]:
    out = [System(f"merged λ={x:g}", Blend.lerp("q", "d", x)) for x in (0, 0.5, 1)]
    out += [System("base")]
    for cfg in dict.fromkeys((teacher, PAPER_CFG)):  # the chosen teacher first
        out.append(System(cfg.label, guidance=cfg.guidance, negative=cfg.negative, plausibility=cfg.plausibility,
                          top_p=cfg.top_p))
    return out + ([System(SOUP, Blend.soup(soup))] if with_soup else [])


# ---------------------------------------------------------------------- inputs
# Every argument of every endpoint passes through these before any work, as sent (the endpoints take raw values:
# Gradio's own conversion would clamp, truncate or stringify them silently, or fail with an empty error).
def _whole(name: str, value) -> int:
    """A whole number: an int, or a float without a fraction (sliders send 3.0). Never a bool or a string."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return value


def _real(name: str, value) -> float:
    return float(_number(name, value))


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _text(name: str, value, blank_ok: bool = True) -> str:
    """Text as sent (None = blank); lists, numbers or dicts are not text."""
    if value is None and blank_ok:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    return value


def _choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return value


def _seed(value) -> int:
    """A seed from the UI: blank (or None) = a fresh random one; else a whole number, as a number or as ASCII digits
    (other scripts' digits, signs and spaces inside are refused rather than guessed)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return secrets.randbelow(2**31)
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]+", value.strip()):
            raise ValueError(f"seed must be a whole number or blank, got {value!r}")
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed must be a whole number or blank, got {value!r}")
    return value


class StopSignal:
    """Whether the session pressed Stop after this request was submitted: a Stop reaches a request that is still
    queued (it never starts) as well as one that is sampling or decoding, and never a later request."""

    def __init__(self, stops: dict[str, float], session: str, submitted: float):
        self._stops, self.session, self.submitted = stops, session, submitted

    def is_set(self) -> bool:
        return self._stops.get(self.session, -math.inf) >= self.submitted


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "unconditional"


class Studio:
    """The app's state shared by all sessions (models, scorers, ratings) and its callbacks, free of Gradio."""

    def __init__(self, service: MusicService, scorers: Scorers | None = None, ratings: RatingStore | None = None,
                 fronts: dict | None = None, banner: list[str] | None = None, out_dir: str | Path | None = None,
                 soup: list[str] | None = None, fronts_exact: dict | None = None, teacher: CfgSetting = PAPER_CFG,
                 concurrency: int = 2, keep_outputs: int = MAX_OUTPUT_FOLDERS, measured: dict | None = None):
        self.service, self.scorers, self.ratings = service, scorers or Scorers(), ratings
        self.fronts, self.fronts_exact, self.banner = fronts or {}, fronts_exact or {}, banner or []
        self.teacher = teacher
        self.measured = measured or {}  # how the fronts were measured (prompts, clips, seconds)
        self.models = ""  # which models are loaded, for the page (make_studio fills it)
        self.readable = isinstance(service.model.codec, ScoreCodec)  # nano: exact metrics from the tokens
        self.soup = ["q", "d", *(soup or [])]
        if out_dir is None:  # a folder of this process's own, removed when it exits
            out_dir = tempfile.mkdtemp(prefix="cfg-distill-")
            atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
        self.out_dir = Path(out_dir)
        self.keep_outputs = _whole("keep_outputs", keep_outputs)
        self.running = 0  # jobs running the models now
        self.concurrency = _whole("concurrency", concurrency)
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
        self._stops: collections.OrderedDict[str, float] = collections.OrderedDict()  # session -> last Stop
        self._pairs: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._systems = {sys.label: sys for sys in ab_systems(len(self.soup) >= 3, self.soup, teacher)}

    # ------------------------------------------------------------------ generation
    @property
    def modes(self) -> list[str]:
        return list(MODES) + ([SOUP] if len(self.soup) >= 3 else [])

    def blend(self, mode: str, lam: float) -> Blend:
        if _choice("mode", mode, self.modes) == SOUP:
            return Blend.soup(self.soup)
        return Blend.lerp(*MODES[mode], _real("λ", lam))

    def merge(self, mode: str, lam: float) -> str:
        """Merge now (on slider release) so that the next generation starts at once; returns the merge time."""
        blend = self.blend(mode, lam)
        with self.service.gate.use(blend) as merge_s:
            pass
        what = blend.describe() if mode == SOUP else f"λ = {float(lam):.2f} ({blend.describe()})"
        return f"{what}: merged in {merge_s * 1000:.1f} ms." if merge_s else f"{what}: already merged."

    def stop_signal(self, session: str, submitted: float | None = None) -> StopSignal:
        """The signal of a request of `session` submitted at `submitted` (time.monotonic; default now)."""
        return StopSignal(self._stops, _text("session", session), time.monotonic() if submitted is None else submitted)

    def stop(self, session: str) -> str:
        """Stop every request this session has submitted so far, queued or running."""
        with self._lock:
            self._stops[_text("session", session)] = time.monotonic()
            self._stops.move_to_end(session)
            while len(self._stops) > MAX_SESSIONS:  # bounded: the oldest sessions' Stop times are forgotten
                self._stops.popitem(last=False)
        return "Stopped."

    def generate(self, prompt: str, num_clips, duration, seed, temperature, mode: str, lam, compare: bool, guidance,
                 negative: str, plausibility=0.0, top_p=0.0, session: str = "", progress=None,
                 submitted: float | None = None) -> Result:
        cancel = self.stop_signal(session, submitted)
        # 1. every argument checked before any work (the CFG side too: the same prompt and seed)
        seed = _seed(seed)
        req = Request(_text("prompt", prompt), _whole("clips", num_clips), _real("duration", duration), seed,
                      _real("temperature", temperature))
        cfg_req = None
        if _flag("compare", compare):
            cfg_req = Request(req.prompt, req.num_clips, req.duration_s, seed, req.temperature,
                              guidance=_real("γ", guidance), negative_prompt=_text("negative prompt", negative),
                              plausibility=_real("α", plausibility), top_p=_real("top-p", top_p))
        blend = self.blend(mode, lam)
        # 2. the clips, then their scores and files
        label = f"{mode} λ={float(lam):.2f}" if mode != SOUP else SOUP
        with self._job("generate", req.num_clips * (1 if cfg_req is None else 2)):
            result = self._clips(req, cfg_req, blend, label, cancel, progress)
            self._score(result)
            stop_if_cancelled(cancel, "after scoring")  # no files, nothing returned
            result.files = self._write_wavs(result, mode, lam)
        return result

    def _clips(self, req: Request, cfg_req: Request | None, blend: Blend, label: str, cancel: StopSignal,
               progress) -> Result:
        hook = (lambda desc: (lambda i, n: progress(i / n, desc=desc))) if progress else (lambda desc: None)
        result = Result(self.service.generate_merged(req, blend, progress=hook("merged model"), cancel=cancel),
                        label=label)
        if cfg_req is not None:
            result.base = self.service.generate_base(cfg_req, progress=hook("base + CFG"), cancel=cancel)
            result.base_label = CfgSetting(cfg_req.guidance, cfg_req.negative_prompt, cfg_req.plausibility,
                                           cfg_req.top_p).label
        return result

    def _score(self, result: Result) -> None:
        prompt = result.merged.request.prompt
        for key, gen in (("merged", result.merged), ("base", result.base)):
            if gen is not None and (self.scorers.has_diversity or self.scorers.has_quality or self.scorers.clap):
                result.scores[key] = self.scorers.score(gen.audio, gen.sample_rate, prompt)
            if gen is not None and self.readable:
                codes = gen.codes.numpy()
                result.exact[key] = ExactScores.of(codes, prompt)
                result.played[key] = [played(c, prompt) for c in codes]

    @contextlib.contextmanager
    def _job(self, what: str, clips: int):
        """Count the jobs running the models at once (all endpoints together); one log line per finished job."""
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

    def _write_wavs(self, result: Result, mode: str, lam) -> list[str]:
        folder = self.out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        folder.mkdir(parents=True)
        prune(self.out_dir, self.keep_outputs, spare=folder)
        return write_set_wavs(folder, result, f"lam{float(lam):.2f}" if mode != SOUP else "soup")

    # ------------------------------------------------------------------ blind A/B
    def systems(self) -> list[str]:
        """The A/B systems' labels (display only: `system` maps a label to its settings)."""
        return list(self._systems)

    def system(self, label: str) -> System:
        if not isinstance(label, str) or label not in self._systems:
            raise ValueError(f"unknown system {label!r}; choose from {self.systems()}")
        return self._systems[label]

    def _generate_system(self, system: System, req: Request) -> Generation:
        req = dataclasses.replace(req, guidance=system.guidance, negative_prompt=system.negative,
                                  plausibility=system.plausibility, top_p=system.top_p)
        if system.blend is None:
            return self.service.generate_base(req)
        return self.service.generate_merged(req, system.blend)

    def new_pair(self, prompt: str, system_1: str, system_2: str, num_clips=2, duration=5.0, seed=None):
        """Two sets, same prompt and seed, in a random hidden order. Returns (token, set A, set B)."""
        self.system(system_1), self.system(system_2)  # both known, before any work
        if system_1 == system_2:
            raise ValueError("choose two different systems to compare")
        n = _whole("clips", num_clips)
        if not 1 <= n <= MAX_PAIR_CLIPS:
            raise ValueError(f"clips per set must be between 1 and {MAX_PAIR_CLIPS}, got {n}")
        seed = _seed(seed)
        req = Request(_text("prompt", prompt), n, _real("duration", duration), seed)
        order = [system_1, system_2]
        if secrets.randbelow(2):
            order.reverse()
        with self._job("new_pair", 2 * n):
            sets = [self._generate_system(self.system(s), req) for s in order]
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._pairs[token] = dict(prompt=req.prompt, seed=seed, a=order[0], b=order[1])
            while len(self._pairs) > 10_000:
                self._pairs.popitem(last=False)
        return token, sets[0], sets[1]

    def write_pair(self, token: str, a: Generation, b: Generation) -> list[str]:
        """WAVs of a blind pair, named A1…, B1… so that nothing tells the systems apart."""
        folder = self.out_dir / f"pair-{token}"
        folder.mkdir(parents=True, exist_ok=True)
        prune(self.out_dir, self.keep_outputs, spare=folder)
        return write_pair_wavs(folder, a, b)

    def rate(self, token: str, quality: str, diversity: str, session: str = "") -> str:
        """Store a vote on a pair made by `new_pair`; returns which system was which."""
        if self.ratings is None:
            raise ValueError("ratings are not enabled on this server")
        for name, vote in (("quality", quality), ("diversity", diversity)):
            if not isinstance(vote, str) or vote not in VOTES:
                raise ValueError(f"choose A, B or tie for {name}")
        if not isinstance(token, str) or not token:
            raise ValueError("make a pair first")
        with self._lock:
            pair = self._pairs.pop(token, None)
        if pair is None:
            raise ValueError("this pair was already rated or has expired: make a new pair")
        self.ratings.add(pair["prompt"], pair["seed"], pair["a"], pair["b"], quality, diversity, session)
        return f"Thanks! A was **{pair['a']}**, B was **{pair['b']}**."

    def results_table(self) -> list[list]:
        return self.ratings.table() if self.ratings is not None else []

    def export_ratings(self) -> str:
        if self.ratings is None:
            raise ValueError("ratings are not enabled on this server")
        path = self.out_dir / f"ratings-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        path.write_text(self.ratings.export_csv())
        return str(path)


# ---------------------------------------------------------------------- files
def write_set_wavs(folder: Path, result: Result, merged_tag: str) -> list[str]:
    """16-bit WAVs of both sets, named after prompt, seed and λ or γ, with what made each clip in its comment (CFG
    settings only on CFG clips; on nano also the tempo and key it played); then one ZIP of them all, listed first."""
    files = []
    for key, gen, tag in (("merged", result.merged, merged_tag), ("base", result.base, None)):
        if gen is None:
            continue
        req = gen.request
        tag = tag or f"cfg{req.guidance:g}"
        plays = result.played.get(key) or [None] * len(gen.audio)
        for i, clip in enumerate(gen.audio):
            path = folder / f"{_slug(req.prompt)}_seed{gen.seed}_{tag}_clip{i + 1}.wav"
            with sf.SoundFile(path, "w", gen.sample_rate, 1, "PCM_16") as f:
                f.title = req.prompt[:200] or "(unconditional)"
                f.comment = clip_comment(gen, i, plays[i])
                f.write(np.clip(clip, -1, 1))
            files.append(str(path))
    archive = folder / f"{_slug(result.merged.request.prompt)}_seed{result.merged.seed}_{merged_tag}_all.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, Path(f).name)
    return [str(archive)] + files


def clip_comment(gen: Generation, i: int, played_clip: dict | None = None) -> str:
    """What made clip i, and (nano) the tempo and key it played."""
    req = gen.request
    text = f"prompt={req.prompt!r} seed={gen.seed} model={gen.model} clip={i + 1} temperature={req.temperature:g}"
    if req.guidance > 1:
        text += (f" guidance={req.guidance:g} negative={req.negative_prompt!r} plausibility={req.plausibility:g}"
                 f" top_p={req.top_p:g}")
    if played_clip is not None:
        text += f" tempo={played_clip['tempo']!r} key={played_clip['key']!r}"
    return text


def write_pair_wavs(folder: Path, a: Generation, b: Generation) -> list[str]:
    files = []
    for letter, gen in (("A", a), ("B", b)):
        for i, clip in enumerate(gen.audio):
            path = folder / f"{letter}{i + 1}.wav"
            sf.write(path, np.clip(clip, -1, 1), gen.sample_rate, subtype="PCM_16")
            files.append(str(path))
    return files


def prune(out_dir: Path, keep: int = MAX_OUTPUT_FOLDERS, spare: Path | None = None) -> None:
    """Keep the newest `keep` output folders, and always `spare` (the one a request is writing). Safe while other
    requests prune the same folder: one that vanishes between listing and deleting is simply gone already."""
    folders = []
    for path in out_dir.iterdir():
        try:
            if path.is_dir() and path != spare:
                folders.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    folders.sort()
    for _, old in folders[:max(len(folders) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


class Janitor:
    """Deletes the files a server created in `folder` once `lifetime` seconds old (and the folders they leave empty),
    every sixth of the lifetime. Gradio's own `delete_cache` misses the audio it serves through component updates
    (measured with bench/soak.py: its cache grew without bound), so the app gives Gradio a private cache folder and
    sweeps it. Files older than `started` (the page's own images, made while the UI was built) are kept."""

    def __init__(self, folder: str | Path, lifetime: float, started: float | None = None):
        self.folder, self.lifetime = Path(folder), float(lifetime)
        self.started = time.time() if started is None else started

    def sweep(self, now: float | None = None) -> int:
        """Delete what is due; returns how many files went."""
        now, gone = time.time() if now is None else now, 0
        for root, _dirs, files in os.walk(self.folder, topdown=False):
            for name in files:
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                    if st.st_ctime >= self.started and st.st_mtime < now - self.lifetime:
                        os.remove(path)
                        gone += 1
                except FileNotFoundError:
                    continue
            if root != str(self.folder):
                with contextlib.suppress(OSError):
                    os.rmdir(root)  # only if empty now; fails harmlessly otherwise
        return gone

    def start(self) -> threading.Thread:
        def loop():
            while True:
                time.sleep(max(self.lifetime / 6, 1))
                self.sweep()
        thread = threading.Thread(target=loop, name="janitor", daemon=True)
        thread.start()
        return thread


# ---------------------------------------------------------------------- presentation


def heard_markdown(prompt: str) -> str:
    """What nano can make of the prompt (`engine.heard`), for the panel under the prompt box."""
    h = hear(prompt or "")
    said = [f"genre **{h.genre}**" if h.genre else None, f"mood **{h.mood}**" if h.mood else None,
            f"tempo **{h.bpm:.3g} BPM**" if h.bpm else (f"tempo **{h.tempo}**" if h.tempo else None),
            "**no drums**" if h.drums is False else (f"drums (**{KIT_NAMES[h.kit]}**)" if h.kit else
                                                     "**drums**" if h.drums else None),
            ("instruments **" + ", ".join(h.instruments) + "**") if h.instruments else None,
            f"key **{h.key}**" if h.key else None]
    said = [x for x in said if x]
    lines = ["**What nano hears:** " + ("; ".join(said) if said else "nothing it knows yet: it will choose freely")]
    if h.changes():
        lines.append("**Nearest nano can do:** " + "; ".join(h.changes()))
    if h.implied:
        lines.append("**Follows from the genre:** " + "; ".join(h.implied))
    if h.nothing_for:
        lines.append("**Nano cannot do:** " + ", ".join(h.nothing_for) + " (it has no voices or sound effects)")
    n = len(prompt or "")
    lines.append(f"{n} of {MAX_PROMPT_CHARS} characters" + (": too long, shorten it" if n > MAX_PROMPT_CHARS else ""))
    return "\n\n".join(lines)


def played_markdown(result: Result) -> str:
    """Per clip, what nano played (read from its tokens): its parts, instruments, drums, tempo and key, with ✓/✗ for
    each checkable request of what nano heard in the prompt (? where the clip cannot tell, e.g. a key with too few
    melody notes)."""
    rows, checked_as = [], ""
    for key, title in (("merged", result.label), ("base", result.base_label)):
        for i, p in enumerate(result.played.get(key, [])):
            checks = " ".join([f"{'✓' if ok else '✗'} {name}" for name, ok in p["met"].items()]
                              + [f"? {name}" for name in p["undecided"]]) or "–"
            checked_as = p["checked_as"]
            rows.append(f"| {title} {i + 1} | {', '.join(p['parts']) or 'silence'} | "
                        f"{', '.join(p['instruments']) or '–'} | {', '.join(p['drums'])} | {p['tempo']} | "
                        f"{p['key'] or '–'} | {', '.join(p['problems']) or 'none'} | {checks} |")
    if not rows:
        return ""
    asked = f" Checked against what nano heard: *{checked_as}*." if checked_as else ""
    return (f"**What each clip played** (read from its notes).{asked}\n\n| clip | parts playing | instruments | drums "
            "| tempo | key | problems | what the prompt asked |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def summary_markdown(result: Result) -> str:
    """Seed, notices, and each column's wall time, real-time factor and cost."""
    m = result.merged
    lines = [f"**Seed {m.seed}** (enter it to reproduce these clips)"] + [f"- {n}" for n in m.notices]
    for title, gen in ((f"{result.label} ({m.model})", m), (result.base_label, result.base)):
        if gen is not None:
            t = gen.timings
            merge = f", merge {t['merge'] * 1000:.0f} ms" if t.get("merge") else ""
            lines.append(f"- **{title}**: {t['total']:.2f} s wall, {gen.real_time_factor:.1f}× real time "
                         f"(text {t['text']:.2f} s, sampling {t['sampling']:.2f} s, codec {t['codec']:.2f} s{merge})")
    if result.base is not None:
        ratio = result.base.timings["sampling"] / max(result.merged.timings["sampling"], 1e-9)
        lines.append(f"- CFG costs **{ratio:.2f}×** the merged model's sampling time here.")
    return "\n".join(lines)


def exact_markdown(result: Result) -> list[str]:
    """nano's exact metrics per set: what the prompt asks that the tokens can check, and how the clips meet it."""
    lines = []
    for key, title in (("merged", result.label), ("base", result.base_label)):
        e = result.exact.get(key)
        if e is None:
            continue
        quality = (f"exact quality {e.mean_quality:.2f} of 6" if e.mean_quality is not None
                   else "no exact quality: the prompt asks nothing the tokens can check")
        lines.append(f"- **{title}** (read from the notes) · {quality} · clean clips {np.mean(e.clean):.0%} · "
                     f"exact diversity {e.diversity:.3f}")
    if lines:  # one list item per line: Markdown would run plain lines together
        asked = result.exact["merged"]
        lines.append(f"- checked in the notes: {', '.join(asked.requests) or 'nothing'}"
                     + (f"; not checkable: {', '.join(asked.unchecked)}" if asked.unchecked else ""))
        lines += ["- exact quality = 5 · share of the checkable requests met + clean (every part the prompt calls for "
                  "playing, the melody with enough notes; no noise, on the 16th grid, in one key); exact diversity = "
                  "mean share of differing note events between two clips", ""]
    return lines


def scores_markdown(result: Result) -> str:
    """Per set: exact metrics (nano), mean diversity and Vendi, mean quality, and a per-clip table."""
    lines = exact_markdown(result)
    for key, title in (("merged", result.label), ("base", result.base_label)):
        s = result.scores.get(key)
        if s is None:
            continue
        head = [f"**{title}**"]
        if s.mean_diversity is not None:
            head.append(f"mean diversity {s.mean_diversity:.3f}, Vendi {s.vendi:.2f} of {len(s.diversity)}")
        if s.quality is not None:
            head.append(f"mean quality {s.mean_quality:.2f}")
        lines.append(" · ".join(head))
        if s.quality is not None:
            lines.append("| clip | quality | adherence | audio quality |\n|---|---|---|---|")
            lines += [f"| {i + 1} | {q:.2f} | {a:.3f} | {c:.3f} |"
                      for i, (q, a, c) in enumerate(zip(s.quality, s.adherence, s.audio_quality, strict=True))]
        elif s.adherence is not None:
            lines.append("adherence: " + ", ".join(f"{a:.3f}" for a in s.adherence))
        lines.append("")
    if not lines:
        return "_No scorers loaded: diversity and quality are not shown._"
    if not result.scores:
        return "\n".join(lines)
    omega = next(iter(result.scores.values())).omega
    return "\n".join(lines) + (f"\nLearned judges (stand-ins for what a real model would use): quality = {omega:g} · "
                                f"adherence + audio quality, from −{omega:g} to {omega + 1:g}; adherence = how well "
                                "the take matches the prompt's text (cosine, −1 … 1); audio quality = the chance "
                                "that it has no wrong notes, timing slips or noise (0 … 1); diversity = mean r_D "
                                "(0 = identical takes).")


def heatmaps(result: Result) -> list:
    """The pairwise-diversity heatmap of each set (None where there is no set or no E)."""
    out = []
    for key, title in (("merged", result.label), ("base", result.base_label)):
        s = result.scores.get(key)
        out.append(diversity_heatmap(s.diversity, f"r_D, {title}")
                   if s is not None and s.diversity is not None else None)
    return out


def qd_figure(fronts: dict, result: Result | None = None, fronts_exact: dict | None = None,
              measured: dict | None = None):
    """The takes on the quality–diversity plane, compared like with like: the precomputed fronts (`measured`: their
    prompts, takes and seconds) are drawn with a set only when it has as many takes of the same length; otherwise
    the set is shown with its own reference (the original model with CFG on the same prompt and seed, when
    comparing). On nano's exact axes when the clips have them, else on the learned scores'. None if nothing to show."""
    measured = measured or {}
    points, exact_axes = {}, bool(fronts_exact) and (result is None or bool(result.exact))
    if result is not None:
        for key, title in (("merged", result.label), ("base", result.base_label)):
            s, e = result.scores.get(key), result.exact.get(key)
            if exact_axes and e is not None and e.mean_quality is not None:
                points[f"{title} (this prompt)"] = (e.diversity, e.mean_quality)
            elif not exact_axes and s is not None and s.mean_diversity is not None and s.quality is not None:
                points[f"{title} (this prompt)"] = (s.mean_diversity, s.mean_quality)
    shown = fronts_exact if exact_axes else fronts
    where = (f"fronts: means over {measured['prompts']} test prompts, {measured['clips']} takes x "
             f"{measured['seconds']:g} s" if {"prompts", "clips", "seconds"} <= set(measured) else "fronts: measured")
    note = where
    if result is not None and shown:
        same = (measured.get("clips") == result.merged.audio.shape[0]
                and abs(float(measured.get("seconds", -1)) - result.merged.duration_s) < 0.05)
        if not same:
            shown = {}
            note = (f"fronts hidden: they were measured with {measured.get('clips', '?')} takes of "
                    f"{measured.get('seconds', '?')} s; make that many to see them")
        else:
            note = where + "; one prompt's point can sit far from them (prompts differ)"
    if not shown and not points:
        return None
    title = "exact quality (0-6) vs exact diversity (0-1)" if exact_axes else "quality vs diversity"
    xlabel = "exact diversity (share of differing notes)" if exact_axes else "diversity (mean r_D)"
    return quality_diversity_plot(shown, points, title=title, xlabel=xlabel, note=note)


# ---------------------------------------------------------------------- UI
def _session(request) -> str:
    return (getattr(request, "session_hash", None) or "") if request is not None else ""


def _enqueued_at() -> float | None:
    """When Gradio queued the event being served (time.monotonic, as Stop records), so that a Stop pressed while it
    waited reaches it; None outside a queued event (then the request counts as submitted when it starts)."""
    from gradio.context import LocalContext  # noqa: PLC0415 (gradio takes seconds to import; only the UI needs it)

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    event = queue.event_ids_to_events.get(event_id) if queue is not None and event_id else None
    return getattr(event, "enqueue_time", None)


def build_ui(studio: Studio, file_lifetime: int = 3600):
    import gradio as gr  # noqa: PLC0415 (gradio takes seconds to import; only the UI needs it)

    service = studio.service
    max_dur = service.max_duration_s

    def readable(fn):
        """Every failure as a message in place (never an empty error), and one log line per rejected request."""
        @functools.wraps(fn)  # keeps the signature: Gradio injects gr.Request and gr.Progress from it
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except GenerationCancelled as e:
                LOG.info("%s: %s by the user", fn.__name__, e)
                raise gr.Error("Stopped.", title="Stopped", print_exception=False) from None
            except (ValueError, CheckpointError) as e:
                LOG.info("%s: rejected: %s", fn.__name__, e)
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:  # a bug: say so in one line here and in the UI, without internals
                LOG.error("%s: failed: %s: %s", fn.__name__, type(e).__name__, e)
                raise gr.Error(f"Something went wrong ({type(e).__name__}); the server log has the details.",
                               print_exception=False) from None
        return wrapped

    def audio_updates(gen: Generation | None, files: list[str], count: int):
        out = []
        for i in range(count):
            visible = gen is not None and i < gen.audio.shape[0]
            out.append(gr.update(value=files[i] if visible else None, visible=visible))
        return out

    def render(r: Result) -> list:
        """The outputs of a generation, in the order of `outputs` below (the message line last)."""
        n = r.merged.audio.shape[0]
        merged_files, base_files = r.files[1:n + 1], r.files[n + 1:]  # files[0]: the ZIP of all
        heat_m, heat_b = heatmaps(r)
        return (audio_updates(r.merged, merged_files, MAX_CLIPS) + audio_updates(r.base, base_files, MAX_CLIPS)
                + [summary_markdown(r), scores_markdown(r), heat_m, heat_b,
                   qd_figure(studio.fronts, r, studio.fronts_exact, studio.measured), r.files, str(r.merged.seed),
                   played_markdown(r) if studio.readable else "", ""])

    @readable
    def generate(prompt, num_clips, duration, seed, temperature, mode, lam, compare, guidance, negative,
                 plausibility, top_p, request: gr.Request,
                 progress=gr.Progress()):  # noqa: B008 (Gradio injects it from this default)
        """The API: the seed as sent (blank = a fresh one); errors as errors."""
        return render(studio.generate(prompt, num_clips, duration, seed, temperature, mode, lam, compare, guidance,
                                      negative, plausibility, top_p, _session(request), progress,
                                      submitted=_enqueued_at()))

    def generate_ui(prompt, num_clips, duration, seed, lock, temperature, mode, lam, compare, guidance, negative,
                    plausibility, top_p, request: gr.Request,
                    progress=gr.Progress()):  # noqa: B008 (Gradio injects it from this default)
        """The button: new takes each press unless the seed is locked; a refusal or a Stop is a message in place,
        and the previous takes stay."""
        try:
            r = studio.generate(prompt, num_clips, duration, seed if lock else None, temperature, mode, lam, compare,
                                guidance, negative, plausibility, top_p, _session(request), progress,
                                submitted=_enqueued_at())
        except GenerationCancelled as e:
            LOG.info("generate: %s by the user", e)
            return [gr.skip()] * (len(outputs) - 1) + ["Stopped: no new takes were made; the previous ones stay."]
        except (ValueError, CheckpointError) as e:
            LOG.info("generate: rejected: %s", e)
            return [gr.skip()] * (len(outputs) - 1) + [f"⚠️ {e}"]
        except Exception as e:  # a bug: one line in the log and a message in place, the takes stay
            LOG.error("generate: failed: %s: %s", type(e).__name__, e)
            return [gr.skip()] * (len(outputs) - 1) + [f"⚠️ Something went wrong ({type(e).__name__}); the server "
                                                       "log has the details. Your previous takes are kept."]
        return render(r)

    @readable
    def merge(mode, lam):
        return studio.merge(mode, lam)

    def stop(request: gr.Request):
        return studio.stop(_session(request))

    def mode_changed(mode):
        soup = mode == SOUP
        return gr.update(interactive=not soup, info=LAMBDA_HELP.get(mode, ""),
                         label="λ (not used by the soup)" if soup else "Safe ↔ varied (λ)" if mode == "θ_q ↔ θ_d"
                         else "Quality model ↔ original (λ)")

    def compare_changed(on):
        return [gr.update(visible=on)] * 3

    @readable
    def new_pair(prompt, system_1, system_2, num_clips, duration):
        token, a, b = studio.new_pair(prompt, system_1, system_2, num_clips, duration)
        files = studio.write_pair(token, a, b)
        n = a.audio.shape[0]
        return ([token] + [gr.update(value=files[i] if i < n else None, visible=i < n) for i in range(MAX_PAIR_CLIPS)]
                + [gr.update(value=files[n + i] if i < n else None, visible=i < n) for i in range(MAX_PAIR_CLIPS)]
                + ["Listen to both sets, then vote."])

    @readable
    def rate(token, quality, diversity, request: gr.Request):
        message = studio.rate(token, quality, diversity, _session(request))
        return message, "", studio.results_table()


    def new_pair_ui(prompt, system_1, system_2, num_clips, duration):
        """New pair from the UI: votes cleared and open again; a refusal is a message, the old pair stays."""
        try:
            out = new_pair.__wrapped__(prompt, system_1, system_2, num_clips, duration)
        except (ValueError, CheckpointError) as e:
            return [gr.skip()] * (len(pair_outputs) - 1) + [f"⚠️ {e}"]
        open_vote = gr.update(value=None, interactive=True)
        return out[:-1] + [open_vote, open_vote, gr.update(interactive=True), out[-1]]

    def rate_ui(token, quality, diversity, request: gr.Request):
        """Submit from the UI: the votes close after one submit, so the pair cannot be rated twice; a refusal is a
        message and the Results table stays as it was."""
        try:
            message = studio.rate(token, quality, diversity, _session(request))
        except ValueError as e:
            return [f"⚠️ {e}"] + [gr.skip()] * 5
        closed = gr.update(interactive=False)
        return [message + " Press **Next pair** for another.", "", studio.results_table(), closed, closed, closed]

    @readable
    def export():
        return studio.export_ratings()

    # Gradio's copies of served files are deleted once `file_lifetime` old (checked every sixth of it), and at restart
    lifetime = max(_whole("file lifetime", file_lifetime), 6)
    with gr.Blocks(title="Diversity-rewarded CFG distillation", delete_cache=(lifetime // 6, lifetime)) as demo:
        gr.Markdown("# Diversity-rewarded CFG distillation\nDescribe some music and get several takes at once. "
                    "The slider goes from the safest takes (the quality model θ_q) to the most varied ones "
                    "(the diversity model θ_d); tick the comparison to hear the original model with guidance "
                    "(CFG) beside them. More under *About this app* at the bottom.")
        for line in studio.banner:
            gr.Markdown(f"> ⚠️ {line}")
        if studio.models:
            with gr.Accordion("Models loaded, and where the scores come from", open=False):
                gr.Markdown(studio.models, elem_id="models")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", placeholder="e.g. calm piano with soft strings", lines=2,
                                        elem_id="prompt", info=f"Describe the music (up to {MAX_PROMPT_CHARS} "
                                                              "characters).")
                    heard_panel = gr.Markdown(heard_markdown("") if studio.readable else "", elem_id="heard",
                                              visible=studio.readable)
                    with gr.Row(visible=studio.readable):
                        use_nano = gr.Button("Use nano's wording", size="sm", elem_id="use-nano")
                        own_words_btn = gr.Button("Back to my words", size="sm", elem_id="own-words")
                    gr.Examples(EXAMPLES, inputs=prompt)
                with gr.Column():
                    num_clips = gr.Slider(1, MAX_CLIPS, value=4, step=1, label="Takes", elem_id="clips",
                                          info="How many clips to make at once.")
                    duration = gr.Slider(0.5, max_dur, value=min(5.0, max_dur), step=0.5, label="Length (s)",
                                         info=f"Up to {max_dur:g} s for this model, at {service.model.sample_rate} "
                                              "samples per second.")
                    with gr.Row():
                        seed = gr.Textbox(label="Seed", value="", max_lines=1, elem_id="seed",
                                          info="The seed of the last takes: copy it to make them again.")
                        lock = gr.Checkbox(label="Lock seed", value=False, elem_id="lock-seed",
                                           info="Off: every press makes new takes. On: the same seed again.")
                    temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Adventurousness (temperature)",
                                            info="Lower = safer, more repetitive; 0 = always the most likely note "
                                                 "(then every take is the same).")
            with gr.Row():
                mode = gr.Radio([(MODE_LABELS[m], m) for m in studio.modes], value=studio.modes[0],
                                label="What the slider blends", elem_id="mode")
                lam = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Safe ↔ varied (λ)", elem_id="lambda",
                                info=LAMBDA_HELP[studio.modes[0]])
                with gr.Column(min_width=160):
                    presets = [gr.Button(name, size="sm") for name in PRESETS]
            merge_info = gr.Markdown(elem_id="merge-info")
            compare = gr.Checkbox(label="Also play the original model with guidance (CFG), side by side",
                                  value=False, elem_id="compare",
                                  info="The same prompt and seed through the base model with classifier-free "
                                       "guidance, the slower method the trained models replace.")
            teacher = studio.teacher
            with gr.Row(visible=False) as cfg_row:
                guidance = gr.Slider(1.0, 10.0, value=teacher.guidance, step=0.25, label="Guidance strength (CFG γ)",
                                     info="1 = no guidance; higher follows the prompt harder.")
                negative = gr.Textbox(label="Steer away from (negative prompt; blank = unconditional)",
                                      value=teacher.negative)
                plausibility = gr.Slider(0.0, 0.5, value=teacher.plausibility, step=0.01,
                                         label="Plausibility mask α (0 = the paper's CFG)",
                                         info="Our addition: CFG may only choose among notes the model itself finds "
                                              "at least α times as likely as its favourite, so guidance cannot "
                                              "push notes off the beat. On nano even 0.1 silences the melody (its "
                                              "notes are each less likely than holding), so the teacher uses 0.")
                top_p = gr.Slider(0.0, 0.99, value=teacher.top_p, step=0.01,
                                  label="Keep only the likeliest notes (top-p; 0 = off)",
                                  info="Our addition: after guidance, play only from the likeliest notes that together "
                                       "make up this share of the probability (0.9 = the likeliest 90 %). Unlike a "
                                       "strict mask it keeps the melody; the teacher chosen by measurement uses it.")
            with gr.Row():
                go = gr.Button("Generate new takes", variant="primary", elem_id="generate")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            message = gr.Markdown(elem_id="message")
            info = gr.Markdown(elem_id="info")
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Trained model (the slider's blend)")
                    merged_audio = [gr.Audio(label=f"Take {i + 1}", visible=False, type="filepath",
                                             elem_classes="merged-clip") for i in range(MAX_CLIPS)]
                with gr.Column(visible=False) as base_col:
                    gr.Markdown("### Original model + guidance (CFG)")
                    base_audio = [gr.Audio(label=f"Take {i + 1}", visible=False, type="filepath",
                                           elem_classes="base-clip") for i in range(MAX_CLIPS)]
            played_panel = gr.Markdown(elem_id="played")
            scores = gr.Markdown(elem_id="scores")
            with gr.Accordion("How different are the takes? (pairwise diversity heatmaps)", open=False):
                with gr.Row():
                    heat_merged = gr.Image(label="Trained model: 0 = identical, 1 = unrelated (r_D)", type="pil")
                    heat_base = gr.Image(label="Original + CFG (r_D)", type="pil", visible=False)
            with gr.Accordion("Quality vs diversity, against the measured fronts", open=False):
                qd = gr.Image(label="Quality vs diversity", type="pil",
                              value=qd_figure(studio.fronts, None, studio.fronts_exact, studio.measured))
            files = gr.File(label="Download: all takes as one ZIP, and each WAV (prompt, seed, λ or γ in the names)",
                            file_count="multiple", elem_id="files")
            with gr.Accordion("About this app", open=False):
                gr.Markdown(ABOUT + (ABOUT_NANO if studio.readable else ""))
            with gr.Accordion("What nano knows (what a prompt can ask for)", open=False, visible=studio.readable):
                gr.Markdown(world_markdown())
        with gr.Tab("Blind A/B"):
            gr.Markdown("Two sets of clips for one prompt from two systems, in a hidden random order. "
                        "Which set sounds better? Which set is more diverse?")
            systems = studio.systems()
            with gr.Row():
                pair_prompt = gr.Textbox(label="Prompt", value="Rock song.", elem_id="pair-prompt")
                system_1 = gr.Dropdown(systems, value=studio.teacher.label, label="System 1")
                system_2 = gr.Dropdown(systems, value="merged λ=0.5", label="System 2")
                pair_clips = gr.Slider(1, MAX_PAIR_CLIPS, value=2, step=1, label="Clips per set")
                pair_duration = gr.Slider(0.5, max_dur, value=min(5.0, max_dur), step=0.5, label="Duration (s)")
            with gr.Row():
                make_pair = gr.Button("New pair", variant="primary", elem_id="new-pair")
                next_pair = gr.Button("Next pair (same settings)", elem_id="next-pair")
            token = gr.Textbox(visible=False)
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Set A")
                    set_a = [gr.Audio(label=f"A{i + 1}", visible=False, type="filepath") for i in range(MAX_PAIR_CLIPS)]
                with gr.Column():
                    gr.Markdown("### Set B")
                    set_b = [gr.Audio(label=f"B{i + 1}", visible=False, type="filepath") for i in range(MAX_PAIR_CLIPS)]
            with gr.Row():
                vote_q = gr.Radio(list(VOTES), label="Better quality", elem_id="vote-quality")
                vote_d = gr.Radio(list(VOTES), label="More diverse", elem_id="vote-diversity")
            submit = gr.Button("Submit rating", elem_id="submit-rating", interactive=False)
            reveal = gr.Markdown(elem_id="reveal")
            api_pair, api_rate = gr.Button(visible=False), gr.Button(visible=False)  # the API's endpoints
        with gr.Tab("Results"):
            gr.Markdown("One row per pair of systems and aspect: the first system's wins, losses and ties against the "
                        "second, and its win rate (W + T/2) / (W + L + T), 0 to 1, with a 95 % confidence interval.")
            table = gr.Dataframe(headers=TABLE_HEADERS, value=studio.results_table(), interactive=False,
                                 elem_id="results")
            with gr.Row():
                refresh = gr.Button("Refresh")
                export_btn = gr.Button("Export CSV")
            export_file = gr.File(label="ratings.csv")

        inputs = [prompt, num_clips, duration, seed, temperature, mode, lam, compare, guidance, negative, plausibility,
                  top_p]
        outputs = (merged_audio + base_audio + [info, scores, heat_merged, heat_base, qd, files, seed, played_panel,
                                                message])
        # raw values reach the input layer (preprocess=False); the model-running endpoints share one limit
        models = dict(preprocess=False, concurrency_id="models", concurrency_limit=studio.concurrency)
        api_go = gr.Button(visible=False)  # /generate: the seed as sent, errors as errors (the button uses generate_ui)
        api_event = api_go.click(generate, inputs=inputs, outputs=outputs, api_name="generate", **models)
        ui_inputs = inputs[:4] + [lock] + inputs[4:]
        gen_event = go.click(generate_ui, inputs=ui_inputs, outputs=outputs, api_name=False, trigger_mode="always_last",
                             **models)
        stop_btn.click(stop, None, message, cancels=[gen_event, api_event], api_name="stop", queue=False)
        # λ: typed, dragged or set by a preset, the weights re-merge (the last value wins)
        lam.change(merge, inputs=[mode, lam], outputs=merge_info, api_name="merge", preprocess=False,
                   trigger_mode="always_last")
        mode.change(mode_changed, mode, lam, api_name=False, queue=False).then(
            merge, inputs=[mode, lam], outputs=merge_info, api_name=False)
        for button, value in zip(presets, PRESETS.values(), strict=True):
            button.click(lambda v=value: v, None, lam, api_name=False, queue=False)
        compare.change(compare_changed, compare, [cfg_row, base_col, heat_base], api_name=False, queue=False)
        prompt.change(heard_markdown, prompt, heard_panel, api_name=False, queue=False)
        own_words = gr.State("")
        use_nano.click(lambda p: (hear(p or "").rewritten() or p, p), prompt, [prompt, own_words], api_name=False,
                       queue=False)
        own_words_btn.click(lambda own, p: own or p, [own_words, prompt], prompt, api_name=False, queue=False)

        pair_inputs = [pair_prompt, system_1, system_2, pair_clips, pair_duration]
        pair_outputs = [token] + set_a + set_b + [vote_q, vote_d, submit, reveal]
        api_pair.click(new_pair, pair_inputs, [token] + set_a + set_b + [reveal], api_name="new_pair", **models)
        for button in (make_pair, next_pair):
            button.click(new_pair_ui, pair_inputs, pair_outputs, api_name=False, **models)
        api_rate.click(rate, [token, vote_q, vote_d], [reveal, token, table], api_name="rate", preprocess=False)
        submit.click(rate_ui, [token, vote_q, vote_d], [reveal, token, table, vote_q, vote_d, submit], api_name=False,
                     preprocess=False)
        refresh.click(studio.results_table, None, table, api_name="results")
        export_btn.click(export, None, export_file, api_name="export_ratings")
    _strict_arity(demo, gr.Error)
    return demo


def _strict_arity(demo, error) -> None:
    """A request with too few or too many values gets a readable error naming what is expected (Gradio's own check
    ignores extra values and answers too few with an empty error and a traceback in the log)."""
    def validate_inputs(block_fn, inputs):
        wanted = [getattr(b, "label", None) or type(b).__name__ for b in block_fn.inputs]
        if len(inputs) != len(wanted):
            message = f"{block_fn.name} takes {len(wanted)} values ({', '.join(map(str, wanted))}), got {len(inputs)}"
            LOG.info("%s: rejected: %s", block_fn.name, message)
            raise error(message, print_exception=False)
    demo.validate_inputs = validate_inputs


def bf16_tip(base: str, device: str, dtype: str) -> str | None:
    """A hint for a real MusicGen served in fp32 on a CPU where bf16 weights pay: the C matmul kernel reads them
    (AVX-512) or the CPU has bf16 matrix units (not for nano: no faster there, its weights nearly fit the cache)."""

    if dtype != "fp32" or device != "cpu" or base == "debug" or is_nano_folder(base):
        return None
    if not (kernels.has_few_row_linear() or decoder.cpu_has_bf16()):
        return None
    return ("--dtype bf16 (MUSIC_DTYPE=bf16) decodes a musicgen-small-sized model about 1.4x faster on this CPU at "
            "half the memory (README, Benchmarks); clips then differ slightly from fp32.")


def kernel_tip(device: str) -> str | None:
    """A hint where CPU decoding falls back to torch because the C kernels could not be built."""

    if device != "cpu" or kernels.load() is not None or os.environ.get("MUSIC_CPU_KERNELS", "1") == "0":
        return None
    return (f"CPU decoding runs through torch only ({kernels.status()}): with a C compiler (gcc or clang) it builds "
            "two small kernels, each of which makes decoding several clips 1.2-1.6x faster (README, Benchmarks).")


def _unsigned(path: str) -> bool:
    """A local safetensors checkpoint without our checksum (hub ids and the debug model are not files of ours)."""
    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder] if folder.is_file() else []
    return any(not is_signed(f) for f in files)


def weights_report(service: MusicService, sources: dict[str, tuple[str, str | None]]) -> str:
    """One line for the log at start-up: each loaded θ, whether its checksum was verified, how far from the base."""
    parts = []
    for label, (name, path) in sources.items():
        if path is None:
            parts.append(f"{label} = the base")
            continue
        check = "not verified (no checksum)" if _unsigned(path) else "checksum verified"
        parts.append(f"{label} = {path} ({check}, {100 * service.relative_distance(name):.1f} % from the base)")
    return "; ".join(parts)


def models_markdown(base: str, sources: dict[str, str | None], scorers: Scorers, readable: bool) -> str:
    """Which models this server loaded and where each score comes from (shown folded at the top of the page)."""
    lines = [f"- **Base model**: {base}" + (" (MusicGen-nano: every take's notes can be read back)" if readable
                                               else "")]
    lines += [f"- **{name}**: {path or 'the base model (none given)'}" for name, path in sources.items()]
    if scorers.has_diversity:
        lines.append("- **Diversity**: the diversity embedding E (mean r_D between takes)")
    if readable:
        lines.append("- **Quality**: read from the notes (exact quality), and nano's learned judges")
    elif scorers.clap is not None:
        lines.append("- **Quality**: CLAP adherence (how well a take matches the prompt's text)")
    else:
        lines.append("- **Quality**: none (no CLAP model configured: `--clap`)")
    return "\n".join(lines)


def make_studio(args: argparse.Namespace) -> Studio:
    """Load models and scorers as the flags say (defaults: the shipped nano weights)."""

    banner = []
    base = args.base or _shipped("nano")
    if base is None:
        base = "debug"
        banner.append("No trained weights in weights/nano: running a tiny random model, so clips are noise.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the shipped nano's θ_q, θ_d, E and scorers ship too
    shipped_nano = base != "debug" and Path(base).resolve() == (WEIGHTS / "nano").resolve()
    theta_q = args.theta_q or (_shipped("theta_q") if shipped_nano else None)
    theta_d = args.theta_d or (_shipped("theta_d") if shipped_nano else None)
    service, notices = MusicService.from_sources(base, theta_q, theta_d, args.allow_download, args.max_duration, device,
                                                   args.dtype)
    banner += notices
    banner += [tip for tip in (bf16_tip(base, device, args.dtype), kernel_tip(device)) if tip is not None]
    soup_paths = args.soup
    if soup_paths is None:  # the shipped β = 15 model joins θ_q and θ_d (β = 50) in the paper's uniform soup
        soup_paths = [p for p in [_shipped("theta_b15")] if p and shipped_nano]
    soup = []
    for i, path in enumerate(soup_paths):
        service.add_checkpoint(f"soup{i}", path)
        soup.append(f"soup{i}")
    LOG.info("weights: %s", weights_report(service, {"θ_q": ("q", theta_q), "θ_d": ("d", theta_d)}
                                                | {f"soup {i}": (f"soup{i}", p) for i, p in enumerate(soup_paths)}))
    unsigned = [str(p) for p in (base, theta_q, theta_d, *soup_paths) if p and _unsigned(p)]
    if unsigned:
        banner.append(f"Not verified (no checksum in the file): {', '.join(unsigned)}.")
    embedding = args.embedding or (_shipped("embedding") if shipped_nano else None)
    quality = args.quality or (_shipped("quality") if shipped_nano else None)
    scorers = Scorers.from_folders(embedding, quality, clap=args.clap, allow_download=args.allow_download)
    if not scorers.has_diversity:
        banner.append("No diversity embedding E loaded: diversity is not shown.")
    ratings = RatingStore(args.ratings_db)
    fronts = load_fronts(args.fronts) if args.fronts else {}
    fronts_exact = load_fronts(args.fronts, "fronts_exact") if args.fronts else {}
    teacher = load_teacher(args.teacher or (_shipped("eval/teacher_sweep/teacher.json") if shipped_nano else None))
    studio = Studio(service, scorers, ratings, fronts, banner, soup=soup, fronts_exact=fronts_exact, teacher=teacher,
                    concurrency=args.concurrency, keep_outputs=args.keep_outputs,
                    measured=load_front_settings(args.fronts) if args.fronts else {})
    studio.models = models_markdown(base, {"θ_q (quality model)": theta_q, "θ_d (diversity model)": theta_d}
                                    | {f"soup model {i + 1}": p for i, p in enumerate(soup_paths)}, scorers,
                                    studio.readable)
    return studio


def private_gradio_cache() -> Path | None:
    """Give Gradio a cache folder of this process's own (removed at exit) unless GRADIO_TEMP_DIR names one; returns
    it (None when the user chose the folder: it may be shared, so only Gradio's own cleanup touches it)."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    folder = tempfile.mkdtemp(prefix="cfg-distill-served-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = folder  # read by Gradio when it caches a file
    return Path(folder)


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    LOG.setLevel(logging.INFO)
    # a stop by SIGTERM (a service manager, Spaces, `kill`) exits like Ctrl-C, so the atexit clean-ups run and no
    # temporary folder is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    args = parse_args(argv)
    cache = private_gradio_cache()
    studio = make_studio(args)
    demo = build_ui(studio, args.file_lifetime)
    if cache is not None:
        Janitor(cache, args.file_lifetime).start()
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    LOG.info("serving on http://%s:%d (monitoring %s)", args.host, args.port, "on" if args.monitoring else "off")
    demo.launch(server_name=args.host, server_port=args.port, state_session_capacity=MAX_SESSIONS,
                enable_monitoring=args.monitoring, quiet=not args.monitoring,
                app_kwargs=dict(exception_handlers={KeyError: unknown_key}))


def unknown_key(request, exc: KeyError):
    """A request naming an endpoint (fn_index) or session the server does not have: 404 with a reason, one log line
    (Gradio lets the KeyError through as a bare 500 with a traceback)."""
    from fastapi.responses import JSONResponse  # noqa: PLC0415 (a Gradio dependency; only the server needs it)

    LOG.info("%s: rejected: unknown key %s", request.url.path, exc)
    return JSONResponse({"detail": f"unknown endpoint or session: {exc}"}, status_code=404)


if __name__ == "__main__":
    main()
