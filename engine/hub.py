"""Weights from the Hugging Face Hub: a θ, E, quality scorer or nano base named by a repo id instead of a local folder.

`resolve` turns `owner/name` (or `owner/name@revision`) into the local folder of its snapshot, through huggingface_hub's
cache, downloading only when the operator allows it (`--allow-download`); everything after that is the code path of a
local folder, trust check included (`engine.trust`: a θ from the Hub is refused unless a manifest lists it, an HMAC
signs it, or `--allow-unverified-weights` says so). A spec that names an existing local path is never looked up.
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.checkpoint import CheckpointError

# what a shipped folder needs (weights, configs) and its card; nothing else of a repo is fetched
WEIGHT_FILES = ("*.safetensors", "*.json", "README.md")
# the Hub's repo names: owner and name of letters, digits, '-', '_' and '.', at most 96 characters each
REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]{1,100}))?$")


def is_repo_id(spec: str | None) -> bool:
    """Whether `spec` reads as a Hub repo id (and names no local path, which always wins)."""
    return bool(spec) and REPO_ID.match(spec) is not None and not Path(spec).exists()


def resolve(spec: str | None, allow_download: bool, cache_dir: str | None = None) -> str | None:
    """The local folder of `spec`: itself if it is not a repo id, else its snapshot (downloaded only if allowed)."""
    if not is_repo_id(spec):
        return spec
    from huggingface_hub import snapshot_download  # noqa: PLC0415 (only a Hub spec needs it)
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415

    match = REPO_ID.match(spec)
    try:
        return snapshot_download(match["repo"], revision=match["revision"], allow_patterns=list(WEIGHT_FILES),
                                 local_files_only=not allow_download, cache_dir=cache_dir)
    except LocalEntryNotFoundError:
        hint = "" if allow_download else " and downloads are off (pass --allow-download to fetch it)"
        raise CheckpointError(f"{spec}: not in the local Hugging Face cache{hint}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"{spec}: could not be fetched from the Hugging Face Hub ({e})") from None


def resolve_base(spec: str | None, allow_download: bool, cache_dir: str | None = None) -> str | None:
    """A base named by repo id: its snapshot folder when the repo is a nano (it holds nano.json); a MusicGen repo id
    stays as it is, for transformers to load."""
    if not is_repo_id(spec):
        return spec
    from huggingface_hub import hf_hub_download  # noqa: PLC0415
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415

    match = REPO_ID.match(spec)
    try:
        hf_hub_download(match["repo"], "nano.json", revision=match["revision"], local_files_only=not allow_download,
                        cache_dir=cache_dir)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError):
        return spec  # not a nano, or not reachable: transformers says what is wrong with a MusicGen id
    return resolve(spec, allow_download, cache_dir)
