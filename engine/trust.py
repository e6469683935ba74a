"""Which weights a server trusts: a trust anchor that a checkpoint file cannot carry itself.

The SHA-256 in a safetensors file's metadata (`engine.checkpoint`) shows damage, not tampering: anyone can re-sign a
changed file with the same code. A file is *trusted* here when its tensor data's SHA-256 is listed in a manifest
that ships with the code (`engine/weights_manifest.json`, written by `python -m training.sign --manifest weights`)
or that the operator names (`--manifest FILE`), or when it carries an HMAC of that digest made with a secret key
from the environment (`MUSIC_WEIGHTS_KEY`; `python -m training.sign --hmac` adds it). The app refuses an untrusted local
checkpoint, naming it, unless the operator allows it explicitly (`--allow-unverified-weights`).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from engine.checkpoint import CheckpointError, data_digest, file_metadata

MANIFEST = "engine/weights_manifest.json"  # the shipped weights' digests: shipped with the code, not the weights
HMAC_KEY = "hmac_sha256"  # metadata entry: hex HMAC-SHA256(key, data digest)
KEY_ENV = "MUSIC_WEIGHTS_KEY"


def read_manifest(path: str | Path) -> dict[str, str]:
    """{file name: data digest} of a manifest (a missing file: {}); a malformed one is an error naming it."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file; refusing to read it as a manifest")
    try:
        data = json.loads(path.read_text())
        return {str(k): str(v) for k, v in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a weights manifest ({e})") from None


def write_manifest(files: list[Path], root: Path, path: str | Path) -> dict[str, str]:
    """The digests of `files` (named relative to `root`), written to `path`."""
    entries = {str(f.resolve().relative_to(root.resolve())): data_digest(f) for f in sorted(files)}
    Path(path).write_text(json.dumps(dict(files=entries), indent=1, sort_keys=True) + "\n")
    return entries


def keyed_digest(digest: str, key: str) -> str:
    return hmac.new(key.encode(), digest.encode(), hashlib.sha256).hexdigest()


def trusted(path: str | Path, digests: set[str], key: str | None = None) -> bool:
    """Whether the safetensors file's tensor data is one the manifests list, or carries a valid HMAC under `key`."""
    digest = data_digest(path)
    if digest in digests:
        return True
    mac = file_metadata(path).get(HMAC_KEY)
    return bool(key) and mac is not None and hmac.compare_digest(mac, keyed_digest(digest, key))


def untrusted(paths: list[str | Path], digests: set[str], key: str | None = None) -> list[str]:
    """The local safetensors files among `paths` (files, or folders holding them) that are not trusted."""
    out = []
    for path in paths:
        folder = Path(path)
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder] if folder.is_file() else []
        out += [str(f) for f in files if not trusted(f, digests, key)]
    return out


def key_from_environment() -> str | None:
    return os.environ.get(KEY_ENV) or None
