"""Start-up: load the models and scorers the flags name (defaults: the shipped nano weights), say what was loaded, and
give the tips and warnings the page shows at its top."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import decoder, hub, kernels, loudness, shipped
from engine.cfg import CfgSetting
from engine.checkpoint import CheckpointError, is_signed
from engine.figures import load_front_settings, load_fronts
from engine.model import is_nano_folder
from engine.ratings import RatingStore
from engine.score_codec import RENDERERS
from engine.scorers import Scorers
from engine.service import MusicService
from engine.studio.core import VOTES_PER_MINUTE, Studio
from engine.studio.files import MAX_OUTPUT_FOLDERS
from engine.studio.pages import models_markdown
from engine.studio.web import ClientAddress
from engine.trust import MANIFEST, key_from_environment, read_manifest, untrusted

LOG = logging.getLogger("cfg_distill.app")
APP_DOC = """The app: steer quality ↔ diversity with λ, A/B the merged model against the base with CFG, rate blind.

Every flag has an environment variable (for Spaces, where the front matter configures the Space); defaults serve the
shipped nano weights offline."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=APP_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_flags(p, os.environ.get)
    serving_flags(p, os.environ.get)
    args = p.parse_args(argv)
    if args.concurrency is not None and args.concurrency < 1:
        p.error(f"--concurrency must be at least 1, got {args.concurrency}")
    for name, least in (("queue_size", 1), ("client_share", 0), ("proxy_hops", 0),
                        ("votes_per_minute", 1)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    return args


def model_flags(p: argparse.ArgumentParser, env) -> None:
    """Which models and scorers to load (defaults: the shipped nano weights), and how."""
    p.add_argument("--base", default=env("MUSIC_BASE"),
                   help="base model (default: weights/nano, else 'debug'): a nano folder or a Hub repo of one, a "
                        "local MusicGen folder, a hub id (facebook/musicgen-small), or 'debug' (tiny random model)")
    p.add_argument("--theta-q", default=env("MUSIC_THETA_Q"),
                   help="quality decoder: a checkpoint file or folder, or a Hub repo id owner/name[@revision] "
                        "(with --allow-download, or already in the Hugging Face cache; default: weights/theta_q)")
    p.add_argument("--theta-d", default=env("MUSIC_THETA_D"),
                   help="diversity decoder, as --theta-q (default: weights/theta_d)")
    p.add_argument("--soup", nargs="*", default=(env("MUSIC_SOUP") or "").split(",") if env("MUSIC_SOUP") else None,
                   help="more decoder checkpoints (e.g. β = 5, 10) for the uniform soup with θ_q and θ_d "
                        "(default with the shipped nano: weights/theta_b15; pass --soup with no path for none)")
    p.add_argument("--embedding", default=env("MUSIC_EMBEDDING"),
                   help="diversity embedding E: a folder or a Hub repo id (default: weights/embedding)")
    p.add_argument("--quality", default=env("MUSIC_QUALITY"),
                   help="quality scorer: a folder or a Hub repo id (default: weights/quality)")
    p.add_argument("--clap", default=env("MUSIC_CLAP"), help="a ClapModel for adherence on real MusicGen audio")
    p.add_argument("--teacher", default=env("MUSIC_TEACHER"),
                   help="the CFG setting the comparison starts from (teacher.json of training.teacher_sweep; default "
                        "with the shipped nano: the chosen teacher; otherwise the paper's γ = 3)")
    p.add_argument("--fronts", default=env("MUSIC_FRONTS", str(shipped.ROOT / shipped.FRONTS)),
                   help="precomputed quality–diversity fronts (from training.evaluate)")
    p.add_argument("--manifest", action="append", default=[m for m in [env("MUSIC_MANIFEST")] if m],
                   help="a weights manifest trusted beside the shipped one (python -m training.sign --manifest; "
                        "repeatable)")
    p.add_argument("--allow-unverified-weights", action="store_true", default=bool(env("MUSIC_ALLOW_UNVERIFIED")),
                   help="load local checkpoints that no manifest lists and no HMAC signs (refused otherwise)")
    p.add_argument("--allow-download", action="store_true", default=bool(env("MUSIC_ALLOW_DOWNLOAD")),
                   help="let the app download Hub checkpoints (base, θ's, E, scorers; off by default: everything "
                        "runs offline from local folders and the Hugging Face cache)")
    p.add_argument("--device", default=env("MUSIC_DEVICE"), help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=env("MUSIC_DTYPE", "fp32"), choices=["fp32", "bf16", "fp16", "int8"],
                   help="decoder weights: bf16 halves memory and is faster on CPUs with AVX-512 BF16 or AMX "
                        "(activations stay fp32 on a CPU; README, Benchmarks); int8 (CPUs with AVX2 or AVX-512): the "
                        "decode-step matmuls read int8 copies, a quarter of fp32's bytes, about 2x faster than fp32 "
                        "for a musicgen-small-sized model; fp32 reproduces the shipped figures")
    p.add_argument("--renderer", default=env("MUSIC_RENDERER", "soundfont"), choices=list(RENDERERS),
                   help="how nano's notes sound: recorded General MIDI instruments (soundfont: stereo, 32 kHz) or the "
                        "wavetable synthesiser the shipped figures used (synth: mono, 16 kHz); MusicGen ignores it")
    p.add_argument("--soundfont", default=env("MUSIC_SOUNDFONT"),
                   help="an .sf2/.sf3 General MIDI bank for --renderer soundfont (default: FluidR3 GM or MuseScore "
                        "General where the system has them, else TimGM6mb from pip)")


def serving_flags(p: argparse.ArgumentParser, env) -> None:
    """How the server serves: lengths, ratings, address, queue, shares, files, MCP, monitoring."""
    p.add_argument("--max-duration", type=float, default=float(env("MUSIC_MAX_DURATION", 30)),
                   help="longest take a user may ask for, in seconds; beyond the model's window (nano 8 s, MusicGen "
                        "30 s) takes are continued window by window (at most 8 windows)")
    p.add_argument("--ratings-db", default=env("MUSIC_RATINGS_DB"),
                   help="SQLite file of blind ratings (default: /data/cfg-distill/ratings.sqlite on a Space with "
                        "persistent storage, else ~/.local/share/cfg-distill/ratings.sqlite)")
    p.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--concurrency", type=int, default=None,
                   help="generations in progress at once (default: 8 where the engine samples requests for the same "
                        "weights together, on CPUs with the C matmul kernel; else 2)")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more are refused")
    p.add_argument("--client-share", type=int, default=int(env("MUSIC_CLIENT_SHARE", 4)),
                   help="requests one client address may have waiting or running at once (0: no limit); more are "
                        "refused with 429, so no client takes the whole queue")
    p.add_argument("--proxy-hops", type=int, default=int(env("MUSIC_PROXY_HOPS", 1 if env("SPACE_ID") else 0)),
                   help="proxies of your own in front of the app (default: 1 on a Space, else 0): a client's address "
                        "is then read from X-Forwarded-For, that many entries from the right")
    p.add_argument("--votes-per-minute", type=int, default=int(env("MUSIC_VOTES_PER_MINUTE", VOTES_PER_MINUTE)),
                   help="blind-test votes one client address may send a minute")
    p.add_argument("--keep-outputs", type=int, default=MAX_OUTPUT_FOLDERS,
                   help="newest generations whose WAV folders stay on disk (older ones are deleted)")
    p.add_argument("--file-lifetime", type=int, default=int(env("MUSIC_FILE_LIFETIME", 3600)),
                   help="seconds Gradio keeps the files it served (clips, images); checked every sixth of that")
    p.add_argument("--mcp", action="store_true", default=bool(env("MUSIC_MCP")),
                   help="also serve the app's endpoints as Model Context Protocol tools at /gradio_api/mcp, so an AI "
                        "agent can make takes (through the same queue, shares and limits as the page)")
    p.add_argument("--no-stream", action="store_true", default=env("MUSIC_STREAM", "1") == "0",
                   help="play takes only once made (by default the first take plays while it is made, where ffmpeg "
                        "is installed: Gradio encodes the stream with it)")
    p.add_argument("--monitoring", action="store_true", default=bool(env("MUSIC_MONITORING")),
                   help="Gradio's monitoring dashboard (off by default: it answers without a login)")




def bf16_tip(base: str, device: str, dtype: str) -> str | None:
    """A hint for a real MusicGen served in fp32 on a CPU where narrower weights pay: int8 and bf16 where the C matmul
    kernel reads them, bf16 where the CPU has bf16 matrix units (not for nano: its weights nearly fit the cache)."""

    if dtype != "fp32" or device != "cpu" or base == "debug" or is_nano_folder(base):
        return None
    if kernels.has_few_row_linear():  # the C kernel reads int8 weights: a quarter of the bytes per step
        return ("--dtype int8 (MUSIC_DTYPE=int8) decodes a musicgen-small-sized model about 2x faster on this CPU, "
                "--dtype bf16 about 1.2-1.4x at half the memory (README, Benchmarks); clips then differ slightly "
                "from fp32.")
    if not decoder.cpu_has_bf16():
        return None
    return ("--dtype bf16 (MUSIC_DTYPE=bf16) decodes a musicgen-small-sized model about 1.4x faster on this CPU at "
            "half the memory (README, Benchmarks); clips then differ slightly from fp32.")


def kernel_tip(device: str) -> str | None:
    """A hint where CPU decoding falls back to torch because the C kernels could not be built."""

    if device != "cpu" or kernels.load() is not None or os.environ.get("MUSIC_CPU_KERNELS", "1") == "0":
        return None
    return (f"CPU decoding runs through torch only ({kernels.status()}): with a C compiler (gcc or clang) it builds "
            "two small kernels, each of which makes decoding several clips 1.2-1.6x faster (README, Benchmarks).")


def zerogpu_notice() -> str | None:
    """Why the app runs on the CPU on ZeroGPU hardware (SPACES_ZERO_GPU set, as Spaces does), or None elsewhere.

    ZeroGPU runs each `@spaces.GPU` call in a forked worker process, arguments and results pickled through queues
    (spaces 0.51: `zero/wrappers.py`), and allows no CUDA work outside such a call. The app's serving state lives in
    one process between requests: the merged weights and the blend gate that keeps each user's λ exact, Stop, and the
    blind pairs waiting for votes; a worker would keep its own copies, and a Stop pressed in the main process would
    never reach its sampling loop. README, "Hosting on Spaces", gives the hardware that fits."""
    if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("1", "true", "yes"):
        return None
    return ("This Space runs on ZeroGPU hardware, which the app does not use: ZeroGPU runs each GPU call in a forked "
            "worker process, and the app's merged weights, Stop and blind pairs live in one process between requests. "
            "It runs on the CPU instead; for a GPU, choose a dedicated GPU (e.g. Nvidia T4 small) in the Space's "
            "settings (README, \"Hosting on Spaces\").")


def unsigned(path: str) -> bool:
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
        check = "no checksum" if unsigned(path) else "checksum intact"
        parts.append(f"{label} = {path} ({check}, {100 * service.relative_distance(name):.1f} % from the base)")
    return "; ".join(parts)


@dataclass
class Sources:
    """Where each model comes from, the shipped nano's weights filling what the flags leave open (only with the
    shipped nano as the base)."""

    base: str
    theta_q: str | None
    theta_d: str | None
    soup: list[str]
    embedding: str | None
    quality: str | None
    teacher: str | None
    banner: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, args) -> Sources:
        """A Hub repo id (`owner/name[@revision]`) in a flag becomes its snapshot's local folder (`engine.hub`), so
        what follows (trust check, loading) is a local folder's path."""
        base, banner = hub.resolve_base(args.base, args.allow_download) or shipped.local(shipped.NANO), []
        if base is None:
            base = "debug"
            banner.append("No trained weights in weights/nano: running a tiny random model, so clips are noise.")
        nano = shipped.is_shipped_nano(base)
        default = lambda given, path: (hub.resolve(given, args.allow_download) if given  # noqa: E731
                                       else shipped.local(path) if nano else None)
        soup = ([hub.resolve(p, args.allow_download) for p in args.soup] if args.soup is not None
                else [p for p in [shipped.local(shipped.THETA_B15)] if p and nano])
        return cls(base, default(args.theta_q, shipped.THETA_Q), default(args.theta_d, shipped.THETA_D), soup,
                   default(args.embedding, shipped.EMBEDDING), default(args.quality, shipped.QUALITY),
                   default(args.teacher, shipped.TEACHER), banner)

    @property
    def checkpoints(self) -> list[str]:
        """The local checkpoint files or folders to load (a hub id or 'debug' is not one)."""
        paths = [self.base, self.theta_q, self.theta_d, *self.soup, self.embedding, self.quality]
        return [p for p in paths if p and Path(p).exists()]


def preflight(src: Sources, args) -> list[str]:
    """Before any model loads (a real MusicGen takes half a minute): every file to read is a regular one, and every
    local checkpoint is trusted (`engine.trust`) or allowed explicitly; returns the page's warnings."""
    for path in [*src.checkpoints, src.teacher, args.fronts]:
        folder = Path(path) if path else None
        if folder is None or not folder.exists():
            continue
        inside = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".json")] if folder.is_dir() else [folder]
        odd = [str(f) for f in inside if not f.is_file()]
        if odd:
            raise CheckpointError(f"{', '.join(odd)}: not a regular file (a FIFO, device or socket?); refusing to read")
    digests = {d for m in [shipped.ROOT / MANIFEST, *args.manifest] for d in read_manifest(m).values()}
    strangers = untrusted(src.checkpoints, digests, key_from_environment())
    if strangers and not args.allow_unverified_weights:
        raise CheckpointError(f"{', '.join(strangers)}: not in the weights manifest and without a valid HMAC (a "
                              "changed or unknown checkpoint); add it with --manifest FILE or sign it with an HMAC "
                              "(python -m training.sign --help), or pass --allow-unverified-weights to load it anyway")
    return [f"Not verified (in no manifest, allowed by --allow-unverified-weights): {', '.join(strangers)}."
            ] if strangers else []


FUSED_CONCURRENCY = 8  # requests in progress at once where the engine fuses their sampling (`engine.fused`): 8 users
# asking for one blend share a call, and their text, decoding and scoring run side by side
UNFUSED_CONCURRENCY = 2  # elsewhere each runs its own sampler: 2 keep both cores busy without crowding them


def concurrency(service: MusicService) -> int:
    return FUSED_CONCURRENCY if service.batcher is not None else UNFUSED_CONCURRENCY


def make_studio(args) -> Studio:
    """Load models and scorers as the flags say (`args`: the parsed flags; defaults: the shipped nano weights), after
    checking the ratings database and every file to read (`preflight`)."""
    src = Sources.of(args)
    # 0. before any model loads: the ratings database, and the files
    ratings = RatingStore(args.ratings_db)
    banner = src.banner + preflight(src, args)
    # 1. the base, θ_q, θ_d and the soup's other members
    zerogpu = zerogpu_notice()
    device = "cpu" if zerogpu else args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    banner += [zerogpu] if zerogpu else []
    service, notices = MusicService.from_sources(src.base, src.theta_q, src.theta_d, args.allow_download,
                                                   args.max_duration, device, args.dtype, args.renderer,
                                                   args.soundfont, fuse=True)  # the app: see engine.threads
    banner += notices + [tip for tip in (bf16_tip(src.base, device, args.dtype), kernel_tip(device)) if tip]
    soup = add_soup(service, src.soup)
    LOG.info("sound: %s", getattr(service.model.codec, "description", "MusicGen's EnCodec"))
    LOG.info("weights: %s", weights_report(service, {"θ_q": ("q", src.theta_q), "θ_d": ("d", src.theta_d)}
                                                | {f"soup {i}": (f"soup{i}", p) for i, p in enumerate(src.soup)}))
    # 2. the scorers, the fronts and the teacher the comparison starts from
    scorers = Scorers.from_folders(src.embedding, src.quality, clap=args.clap, allow_download=args.allow_download)
    if not scorers.has_diversity:
        banner.append("No diversity embedding E loaded: diversity is not shown.")
    banner += sound_mismatch(service.model.codec, {"E": src.embedding, "the quality scorer": src.quality})
    fronts = args.fronts
    studio = Studio(service, scorers, ratings, load_fronts(fronts) if fronts else {}, banner, soup=soup,
                    fronts_exact=load_fronts(fronts, "fronts_exact") if fronts else {},
                    teacher=CfgSetting.load(src.teacher), concurrency=args.concurrency or concurrency(service),
                    keep_outputs=args.keep_outputs, measured=load_front_settings(fronts) if fronts else {},
                    votes_per_minute=args.votes_per_minute, addresses=ClientAddress(args.proxy_hops))
    studio.streams, note = streaming(args.no_stream)
    studio.banner += [note] if note else []
    # 3. what the page says was loaded
    studio.models = models_markdown(src.base, {"θ_q (quality model)": src.theta_q, "θ_d (diversity model)": src.theta_d}
                                    | {f"soup model {i + 1}": p for i, p in enumerate(src.soup)}, scorers,
                                    studio.readable, getattr(service.model.codec, "description", ""))
    return studio


def streaming(off: bool) -> tuple[bool, str | None]:
    """Whether the first take plays while it is made, and a page note where it cannot: Gradio streams audio as AAC,
    which it encodes with an ffmpeg process (pip does not install ffmpeg; a Space lists it in packages.txt)."""
    if off:
        return False, None
    ffmpeg = shutil.which("ffmpeg")
    try:  # it runs (and its libraries are read from disk now, not when the first stream starts)
        subprocess.run([ffmpeg, "-version"], capture_output=True, check=True, timeout=30) if ffmpeg else None
    except (OSError, subprocess.SubprocessError):
        ffmpeg = None
    if ffmpeg is None:
        return False, ("Takes play once they are made: hearing the first take while it is made needs ffmpeg "
                       "(`apt install ffmpeg`; on a Space, `ffmpeg` in packages.txt).")
    loudness.preload()  # the first chunk's level, before the first request
    return True, None


def trained_renderer(folder: str | None) -> str | None:
    """The renderer a learned scorer's training corpus was played by (its run settings in model.json; runs before
    the SoundFont renderer have none: the synthesiser); None where the folder has no readable model.json."""
    try:
        settings = json.loads((Path(folder) / "model.json").read_text())
    except (TypeError, OSError, ValueError):
        return None
    return settings.get("renderer", "synth") if isinstance(settings, dict) else None


def sound_mismatch(codec, scorers: dict[str, str | None]) -> list[str]:
    """A page warning for each learned scorer trained on takes played otherwise than nano's takes here."""
    playing = getattr(codec, "renderer", None)
    if playing is None:  # a real MusicGen: its own audio
        return []
    return [f"{name} was trained on takes played by the {trained} renderer, and these takes are played by the "
            f"{playing} renderer: its scores are less reliable here (`--renderer {trained}` matches it)."
            for name, folder in scorers.items() if (trained := trained_renderer(folder)) not in (None, playing)]


def add_soup(service: MusicService, paths: list[str]) -> list[str]:
    """Register the soup's other members as soup0, soup1, ...; returns their names."""
    for i, path in enumerate(paths):
        service.add_checkpoint(f"soup{i}", path)
    return [f"soup{i}" for i in range(len(paths))]
