"""Files a server writes: the takes' WAVs and ZIP, the blind pairs' WAVs, and the clean-ups that bound them on disk.

Output folders are pruned to the newest `keep` (`prune`); Gradio's own cache of served files is swept by a `Janitor`
(its `delete_cache` misses audio served through component updates).
"""
from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.service import Generation

MAX_OUTPUT_FOLDERS = 64  # newest generations whose WAVs stay here (typically 4 takes × 8 s: 5 MB of stereo WAV + FLAC)
MAX_OUTPUT_BYTES = 1 << 30  # … and at most 1 GiB of them (one request can write ~100 MB: 16 takes × 30 s × 128 kB/s of
# WAV and their FLACs), so the newest ones are dropped first by size, never the one being written


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "unconditional"


ARCHIVES = 1  # the ZIPs listed before the WAVs of a set (`write_set_wavs`): one, of FLACs (lossless, two thirds
# of the WAVs' bytes on SoundFont takes; every DAW reads FLAC; each WAV is there as well)


def write_set_wavs(folder: Path, result, merged_tag: str) -> list[str]:
    """16-bit WAVs of both sets, named after prompt, length, seed and what made them (the blend mode and λ, or the CFG
    setting), so that two sets never share a name; what made each clip in its comment (CFG settings only on CFG clips;
    on nano also the tempo and key it played); then a ZIP of them all as FLAC, listed first, named after both sets."""
    files, tags = [], []
    for key, gen, tag in (("merged", result.merged, merged_tag), ("base", result.base, None)):
        if gen is None:
            continue
        req = gen.request
        tag = tag or cfg_tag(req.cfg)
        tags.append(tag)
        plays = result.played.get(key) or [None] * len(gen.audio)
        for i, clip in enumerate(gen.audio):
            path = folder / f"{set_name(gen, tag)}_clip{i + 1}.wav"
            with sf.SoundFile(path, "w", gen.sample_rate, clip.shape[0], "PCM_16") as f:
                f.title = req.prompt[:200] or "(unconditional)"
                f.comment = clip_comment(gen, i, plays[i])
                f.write(np.clip(clip.T, -1, 1))
            files.append(str(path))
    name = set_name(result.merged, '+'.join(tags))
    return [zip_takes(folder / f"{name}_all.zip", files, "FLAC")] + files


def zip_takes(archive: Path, wavs: list[str], audio_format: str = "WAV") -> str:
    """One ZIP of the WAVs, as they are or re-encoded (FLAC: lossless, the same 16-bit samples in about two thirds
    of the bytes, with the WAV's title and comment)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED if audio_format == "WAV" else zipfile.ZIP_STORED) as z:
        for wav in wavs:
            if audio_format == "WAV":
                z.write(wav, Path(wav).name)
                continue
            with sf.SoundFile(wav) as src:
                data, rate, title, comment = src.read(dtype="int16"), src.samplerate, src.title, src.comment
            buffer = io.BytesIO()
            with sf.SoundFile(buffer, "w", rate, data.shape[1] if data.ndim > 1 else 1, "PCM_16",
                              format=audio_format) as f:
                f.title, f.comment = title, comment
                f.write(data)
            z.writestr(f"{Path(wav).stem}.{audio_format.lower()}", buffer.getvalue())
    return str(archive)


def set_name(gen: Generation, tag: str) -> str:
    """"calm-piano_5s_seed7_q-d-lam0.50": prompt, length, seed and what made the set."""
    return f"{slug(gen.request.prompt)}_{gen.request.duration_s:g}s_seed{gen.seed}_{tag}"


def cfg_tag(cfg) -> str:
    """"cfg3", "cfg3-top-p0.9-uncond": the CFG setting in a file name."""
    cuts = "".join(f"-{name}{value:g}" for name, value in (("alpha", cfg.plausibility), ("top-p", cfg.top_p)) if value)
    return f"cfg{cfg.guidance:g}{cuts}{'' if cfg.negative else '-uncond'}"


def clip_comment(gen: Generation, i: int, played_clip: dict | None = None) -> str:
    """What made clip i, and (nano) the tempo and key it played."""
    req = gen.request
    text = f"prompt={req.prompt!r} seed={gen.seed} model={gen.model} clip={i + 1} temperature={req.temperature:g}"
    if req.guidance > 1:
        text += (f" guidance={req.guidance:g} negative={req.negative_prompt!r} plausibility={req.plausibility:g}"
                 f" top_p={req.top_p:g}")
    if played_clip is not None:  # what nano played; a key only where the melody had enough notes to tell one
        text += f" tempo={played_clip['tempo']!r}" + (f" key={played_clip['key']!r}" if played_clip["key"] else "")
    return text


def write_pair_wavs(folder: Path, a: Generation, b: Generation) -> list[str]:
    files = []
    for letter, gen in (("A", a), ("B", b)):
        for i, clip in enumerate(gen.audio):
            path = folder / f"{letter}{i + 1}.wav"
            sf.write(path, np.clip(clip.T, -1, 1), gen.sample_rate, subtype="PCM_16")
            files.append(str(path))
    return files


def prune(out_dir: Path, keep: int = MAX_OUTPUT_FOLDERS, spare: Path | None = None,
          max_bytes: int = MAX_OUTPUT_BYTES) -> None:
    """Keep the newest `keep` output folders holding at most `max_bytes` together, and always `spare` (the one a
    request is writing). Safe while other requests prune the same folder: one that vanishes between listing and
    deleting is simply gone already."""
    folders = []
    for path in out_dir.iterdir():
        try:
            if path.is_dir() and path != spare:
                folders.append((path.stat().st_mtime, _bytes(path), path))
        except FileNotFoundError:
            continue
    folders.sort(reverse=True)  # newest first
    total = _bytes(spare) if spare is not None else 0
    for i, (_, size, path) in enumerate(folders):
        total += size
        if i >= keep or total > max_bytes:
            shutil.rmtree(path, ignore_errors=True)


def _bytes(folder: Path) -> int:
    total = 0
    if not folder.is_dir():
        return 0
    for f in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += f.stat().st_size
    return total


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


def private_gradio_cache() -> Path | None:
    """Give Gradio a cache folder of this process's own (removed at exit) unless GRADIO_TEMP_DIR names one; returns
    it (None when the user chose the folder: it may be shared, so only Gradio's own cleanup touches it)."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    folder = own_temp_folder(SERVED_PREFIX)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)  # read by Gradio when it caches a file
    return folder


OUTPUTS_PREFIX, SERVED_PREFIX = "cfg-distill-", "cfg-distill-served-"  # + the owner's process id + a random part


def own_temp_folder(prefix: str) -> Path:
    """A temporary folder of this process's own, named after its process id (so that a later start can tell that its
    owner is gone), removed at exit."""
    folder = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def sweep_dead_owners(root: str | Path | None = None) -> list[Path]:
    """Remove the temporary folders of servers that died without cleaning up (kill -9, a crash): those whose owner's
    process id no longer runs. Returns what went. Folders of running processes, or named otherwise, stay."""
    gone = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{OUTPUTS_PREFIX}*"):
        match = re.fullmatch(rf"({re.escape(SERVED_PREFIX)}|{re.escape(OUTPUTS_PREFIX)})(\d+)-\w+", path.name)
        if match is None or not path.is_dir() or _alive(int(match.group(2))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        gone.append(path)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or a number no process has: leave it
    return True
