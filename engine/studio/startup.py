"""Start-up: load the models and scorers the flags name (defaults: the shipped nano weights), say what was loaded, and
give the tips and warnings the page shows at its top."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from engine import decoder, kernels, shipped
from engine.cfg import CfgSetting
from engine.checkpoint import is_signed
from engine.figures import load_front_settings, load_fronts
from engine.model import is_nano_folder
from engine.ratings import RatingStore
from engine.scorers import Scorers
from engine.service import MusicService
from engine.studio.core import Studio
from engine.studio.pages import models_markdown

LOG = logging.getLogger("cfg_distill.app")


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
        check = "not verified (no checksum)" if unsigned(path) else "checksum verified"
        parts.append(f"{label} = {path} ({check}, {100 * service.relative_distance(name):.1f} % from the base)")
    return "; ".join(parts)


def make_studio(args) -> Studio:
    """Load models and scorers as the flags say (`args`: app.py's parsed flags; defaults: the shipped nano weights).
    The shipped nano's θ_q, θ_d, β = 15 model, E, quality scorer and teacher are the defaults only with the shipped
    nano as the base."""
    banner = []
    base = args.base or shipped.local(shipped.NANO)
    if base is None:
        base = "debug"
        banner.append("No trained weights in weights/nano: running a tiny random model, so clips are noise.")
    nano = shipped.is_shipped_nano(base)
    default = lambda given, path: given or (shipped.local(path) if nano else None)  # noqa: E731
    # 1. the base, θ_q, θ_d and the soup's other members
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    theta_q, theta_d = default(args.theta_q, shipped.THETA_Q), default(args.theta_d, shipped.THETA_D)
    service, notices = MusicService.from_sources(base, theta_q, theta_d, args.allow_download, args.max_duration, device,
                                                   args.dtype)
    banner += notices + [tip for tip in (bf16_tip(base, device, args.dtype), kernel_tip(device)) if tip is not None]
    soup_paths = args.soup
    if soup_paths is None:  # the shipped β = 15 model joins θ_q and θ_d (β = 50) in the paper's uniform soup
        soup_paths = [p for p in [shipped.local(shipped.THETA_B15)] if p and nano]
    soup = add_soup(service, soup_paths)
    LOG.info("weights: %s", weights_report(service, {"θ_q": ("q", theta_q), "θ_d": ("d", theta_d)}
                                                | {f"soup {i}": (f"soup{i}", p) for i, p in enumerate(soup_paths)}))
    banner += unsigned_banner([base, theta_q, theta_d, *soup_paths])
    # 2. the scorers, the ratings, the fronts and the teacher the comparison starts from
    scorers = Scorers.from_folders(default(args.embedding, shipped.EMBEDDING), default(args.quality, shipped.QUALITY),
                                   clap=args.clap, allow_download=args.allow_download)
    if not scorers.has_diversity:
        banner.append("No diversity embedding E loaded: diversity is not shown.")
    fronts = args.fronts
    studio = Studio(service, scorers, RatingStore(args.ratings_db), load_fronts(fronts) if fronts else {}, banner,
                    soup=soup, fronts_exact=load_fronts(fronts, "fronts_exact") if fronts else {},
                    teacher=CfgSetting.load(default(args.teacher, shipped.TEACHER)), concurrency=args.concurrency,
                    keep_outputs=args.keep_outputs, measured=load_front_settings(fronts) if fronts else {})
    # 3. what the page says was loaded
    studio.models = models_markdown(base, {"θ_q (quality model)": theta_q, "θ_d (diversity model)": theta_d}
                                    | {f"soup model {i + 1}": p for i, p in enumerate(soup_paths)}, scorers,
                                    studio.readable)
    return studio


def add_soup(service: MusicService, paths: list[str]) -> list[str]:
    """Register the soup's other members as soup0, soup1, ...; returns their names."""
    for i, path in enumerate(paths):
        service.add_checkpoint(f"soup{i}", path)
    return [f"soup{i}" for i in range(len(paths))]


def unsigned_banner(paths: list[str | None]) -> list[str]:
    """The page's warning about local checkpoints without our checksum (none when every one has it)."""
    names = [str(p) for p in paths if p and unsigned(p)]
    return [f"Not verified (no checksum in the file): {', '.join(names)}."] if names else []
