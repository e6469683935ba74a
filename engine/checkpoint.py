"""Safetensors checkpoints: strict loading with errors that name the file and the tensor, atomic saves.

Nothing here unpickles: a checkpoint is a `.safetensors` file, or a folder holding one.

Tamper evidence: every file this project writes carries the SHA-256 of its tensor data (the bytes after the
header) in its metadata (`CHECKSUM_KEY`); every load through `read_safetensors` recomputes it and refuses a file
whose data no longer matches, naming the file. Files from elsewhere (a hub MusicGen) have no such entry and load
as before; `is_signed` tells them apart so that a server can say which of its weights were verified."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# File names looked for, in order, when a checkpoint path is a folder.
DECODER_FILES = ("decoder.safetensors", "model.safetensors")
# Prefixes under which decoder tensors appear in other layouts (the composite MusicGen model).
_PREFIXES = ("", "decoder.")


CHECKSUM_KEY = "sha256"  # metadata entry: hex SHA-256 of the tensor data section
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, tampered with, or does not fit the model."""


def _header(f) -> tuple[dict, int]:
    """The parsed JSON header of an open safetensors file and the offset where its data starts."""
    size = int.from_bytes(f.read(8), "little")
    if not 0 < size <= 100_000_000:
        raise ValueError(f"header size {size} is implausible")
    return json.loads(f.read(size)), 8 + size


def _data_digest(f, start: int) -> str:
    f.seek(start)
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def data_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a safetensors file's tensor data (what `CHECKSUM_KEY` records)."""
    try:
        with open(path, "rb") as f:
            return _data_digest(f, _header(f)[1])
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def file_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file ({} if none)."""
    try:
        with open(path, "rb") as f:
            return _header(f)[0].get("__metadata__") or {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def is_signed(path: str | os.PathLike) -> bool:
    """Whether a safetensors file carries the checksum of its data."""
    return CHECKSUM_KEY in file_metadata(path)


def verify_checksum(path: str | os.PathLike) -> None:
    """Refuse a file whose tensor data does not match the checksum in its metadata (no checksum: nothing to do)."""
    try:
        with open(path, "rb") as f:
            header, start = _header(f)
            expected = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
            if expected is None:
                return
            actual = _data_digest(f, start)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if actual != expected:
        raise CheckpointError(f"{path}: the tensor data does not match the file's SHA-256 checksum (the file was "
                              "changed or damaged after it was written); refusing to load it")


def sign(path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Add (or refresh) the checksum of a safetensors file's tensor data in its metadata, and any `extra` entries
    (e.g. an HMAC: `engine.trust`), atomically. The tensor bytes are copied unchanged: only the header grows."""
    path = Path(path)
    with open(path, "rb") as f:
        header, start = _header(f)
        entries = {CHECKSUM_KEY: _data_digest(f, start), **(extra or {})}
        header["__metadata__"] = dict(header.get("__metadata__") or {}, **entries)
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
        with atomic_file(path) as tmp, open(tmp, "wb") as out:
            out.write(len(text).to_bytes(8, "little") + text)
            f.seek(start)
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                out.write(chunk)
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary file's path in `path`'s folder; once the block succeeds, it replaces `path` (readable by
    all, as any file the folder's users could read); if the block fails, `path` is untouched and the file is gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_file(path: str | os.PathLike, names: tuple[str, ...] = DECODER_FILES) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: folder has none of {', '.join(names)}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors checkpoints are loaded (pickled files are never opened)")
    if not path.is_file():  # a FIFO, a device or a socket would block the read, or never end
        raise CheckpointError(f"{path}: not a regular file; refusing to read it")
    return path


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a file, after checking its checksum where it has one."""
    verify_checksum(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_state(path: str | os.PathLike, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load the tensors matching `reference` (name -> tensor of the expected shape) from `path`.

    Accepts our own files (decoder parameter names) and transformers' composite MusicGen files
    (names prefixed with "decoder."). Every expected tensor must be present with the expected shape and
    finite values; tensors are cast to the reference dtype. Extra tensors are an error, so that a
    checkpoint of another model is never half-loaded silently."""
    file = resolve_file(path)
    tensors = read_safetensors(file)
    prefix = next((p for p in _PREFIXES if all(p + name in tensors for name in reference)), None)
    if prefix is None:  # report against the layout that matches best
        prefix = max(_PREFIXES, key=lambda p: sum(p + name in tensors for name in reference))
        missing = [name for name in reference if prefix + name not in tensors]
        raise CheckpointError(f"{file}: missing {len(missing)} decoder tensor(s), e.g. {prefix}{missing[0]!r}")
    if prefix == "":
        extra = sorted(set(tensors) - set(reference))
        if extra:
            raise CheckpointError(f"{file}: unexpected tensor(s) not in the decoder, e.g. {extra[0]!r}")
    state = {}
    for name, ref in reference.items():
        t = tensors[prefix + name]
        if t.shape != ref.shape:
            raise CheckpointError(f"{file}: tensor {prefix + name!r} has shape {tuple(t.shape)}, "
                                  f"the model expects {tuple(ref.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{file}: tensor {prefix + name!r} contains NaN or inf")
        state[name] = t.to(ref.dtype)
    return state


def save_state(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write `state` as safetensors atomically (temporary file in the same folder, then rename), signed with the
    checksum of its tensor data."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        sign(tmp)
    return Path(path)


def copy_as_fp16(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Ship a trained safetensors file at half the size: floating tensors as fp16 (loading casts them back)."""
    return save_state({k: v.half() if v.is_floating_point() else v for k, v in read_safetensors(src).items()}, dest)


def save_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write bytes atomically (temporary file in the same folder, then rename)."""
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def save_csv(rows: list[dict], fields: list[str], path: str | os.PathLike) -> Path:
    """Write rows (dicts; keys outside `fields` are left out) as CSV with a header, atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return save_bytes(text.getvalue().encode(), path)


def save_json(obj, path: str | os.PathLike) -> Path:
    """Write JSON atomically."""
    return save_bytes((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), path)


def optimizer_tensors(optimizer, named_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter tensor state as flat safetensors entries "<param name>::<key>"."""
    return {f"{name}::{k}": v for name, p in named_params.items()
            for k, v in optimizer.state.get(p, {}).items() if torch.is_tensor(v)}


def restore_optimizer(optimizer, named_params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `optimizer_tensors`."""
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        name, k = key.split("::", 1)
        by_param.setdefault(name, {})[k] = v
    for name, p in named_params.items():
        if name in by_param:
            optimizer.state[p] = by_param[name]
