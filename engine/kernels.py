"""Optional C kernels for CPU decoding, compiled on first use and cached; torch's own ops wherever they are missing.

- `decode_attention`: one decode step of attention (one query per row and head over a KV cache);
- `few_row_linear`: x · wᵀ for the few rows of a decode step (AVX-512, or AVX2 + FMA; fp32, bf16 or int8 weights with
  per-output-channel scales), weights streamed once.
What each saves is measured by `python -m bench.decode_kernels` (README, "Where the time goes").

The source is `engine/csrc/cpu_kernels.c`: plain C (no torch headers), built with the system C compiler (`$CC`,
else cc or gcc) for this CPU (`-march=native`) with OpenMP, which shares the OpenMP runtime torch has already
loaded. The library is cached under `$MUSIC_KERNEL_CACHE` (default `~/.cache/music-cfg-distill/kernels`), keyed by
the source, the flags, the compiler and the CPU; written to a temporary name and renamed, so concurrent first uses
never see half a file.

Without a compiler (or with `MUSIC_CPU_KERNELS=0`) everything runs through torch, with the same results up to float
rounding; `status()` says which path is active and why.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.c"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fPIC", "-shared"]
ISA_NAMES = {512: "AVX-512", 256: "AVX2 + FMA"}  # kernel_isa() -> what few_row_linear was built for
ISA_FLAGS = {"native": [], "avx2": ["-mno-avx512f"]}  # $MUSIC_KERNEL_ISA: "avx2" builds the AVX2 path on a CPU
# with AVX-512 too, so that it is tested and measured there (`bench.decode_kernels`, tests/test_kernels.py)
MAX_HEAD_DIM = 512
W_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}  # few_row_linear's w_kind for each weight dtype

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status = "not built yet"
_tried = False
_few_rows = False  # whether few_row_linear runs here (it needs AVX-512, or AVX2 and FMA)


@functools.cache
def first_cpu() -> str:
    """/proc/cpuinfo's block for the first CPU ("" where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().split("\n\n")[0]
    except OSError:
        return ""


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "music-cfg-distill" / "kernels"
    return Path(os.environ.get("MUSIC_KERNEL_CACHE", default))


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc"):
        if cc and shutil.which(cc):
            return cc
    return None


def _isa_flags() -> list[str]:
    isa = os.environ.get("MUSIC_KERNEL_ISA", "native")
    if isa not in ISA_FLAGS:
        raise RuntimeError(f"MUSIC_KERNEL_ISA must be one of {', '.join(ISA_FLAGS)}, got {isa!r}")
    return ISA_FLAGS[isa]


def _build(cc: str) -> Path:
    """Compile SOURCE (with OpenMP, else without) into the cache; return the library's path."""
    source = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    cpu = next((line for line in first_cpu().splitlines() if line.startswith(("flags", "Features"))), "")
    errors: list[str] = []
    for openmp in (["-fopenmp"], []):
        flags = FLAGS + _isa_flags() + openmp
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(), cpu.encode()]))
        path = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
        if path.exists():
            return path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        except OSError:  # an unwritable cache (e.g. a read-only home on a hosted Space): a private temp folder,
            path = Path(tempfile.mkdtemp(prefix="music-kernels-")) / path.name  # never a shared, guessable one
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
            if done.returncode == 0:
                os.replace(tmp, path)
                return path
            errors.append((done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{cc} failed on {SOURCE}: {' / '.join(errors)}")


def load() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; None where they are disabled or cannot be built."""
    global _lib, _status, _tried, _few_rows
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            if os.environ.get("MUSIC_CPU_KERNELS", "1") == "0":
                _status = "disabled by MUSIC_CPU_KERNELS=0"
            elif (cc := _compiler()) is None:
                _status = "no C compiler found (set CC)"
            else:
                lib = ctypes.CDLL(str(_build(cc)))
                p, i = ctypes.c_void_p, ctypes.c_int64
                lib.decode_attention.argtypes = [p, p, p, i, p, p, i, i, p, p, i, i, i, i, ctypes.c_float, ctypes.c_int]
                lib.decode_attention.restype = ctypes.c_int
                lib.few_row_linear.argtypes = [p, i, p, ctypes.c_int, p, p, i, i, i, ctypes.c_int]
                lib.few_row_linear.restype = ctypes.c_int
                lib.kernel_isa.restype = ctypes.c_int
                _lib, _status = lib, f"C kernels ({SOURCE.name}, built with {cc})"
                _few_rows = _probe_few_row_linear(lib)
                if not _few_rows:
                    _status += "; few-row matmuls through torch (neither AVX-512 nor AVX2 + FMA)"
                else:
                    _status += f"; few-row matmuls: {ISA_NAMES.get(lib.kernel_isa(), 'none')}"
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _status = f"build failed, using torch: {e}"
            log.warning("engine.kernels: %s", _status)
        _tried = True
    return _lib


def simd() -> str:
    """The vector instructions the few-row matmul was built for ("AVX-512", "AVX2 + FMA" or "none")."""
    lib = load()
    return ISA_NAMES.get(lib.kernel_isa() if lib is not None else 0, "none")


def _probe_few_row_linear(lib: ctypes.CDLL) -> bool:
    """Whether the matmul kernel runs here (it answers 1 when built without AVX-512 or AVX2) and adds up."""
    x, w, y = torch.ones(2, 16), torch.ones(8, 16), torch.zeros(2, 8)
    ran = lib.few_row_linear(x.data_ptr(), 16, w.data_ptr(), W_KINDS[torch.float32], None, y.data_ptr(), 2, 16, 8,
                             1) == 0
    return ran and bool((y == 16).all())


def has_few_row_linear() -> bool:
    """Whether `few_row_linear` runs on this CPU (the kernels are built and it has AVX-512, or AVX2 and FMA)."""
    load()
    return _few_rows


def status() -> str:
    """Whether CPU decoding uses the C kernels, and why not."""
    load()
    return _status


def decode_attention(q: Tensor, kc: Tensor, vc: Tensor, length: int, new_k: Tensor | None = None,
                     new_v: Tensor | None = None, mask: Tensor | None = None) -> Tensor | None:
    """softmax(q·kᵀ/√D + mask)·v for one query per row and head, over cache positions 0..length-1.

    q, new_k, new_v: (B, H, 1, D) views whose heads are adjacent per row (heads of one fused projection); new_k
    and new_v are first written into the caches at position length-1. kc, vc: (B, H, ≥length, D) views with
    adjacent heads, e.g. of a position-major (T, B, H, D) buffer (`FastDecoder.new_state`). mask: (B, 1, 1, length)
    additive, contiguous. Returns (B, 1, H·D), or None where the kernel does not apply (not built, not fp32 on a
    CPU, other layouts, autograd): the caller then uses torch."""
    lib = load()
    B, H, _, D = q.shape
    heads = (q,) if new_k is None else (q, new_k, new_v)
    if (lib is None or q.device.type != "cpu" or D > MAX_HEAD_DIM
            or any(t.dtype != torch.float32 or t.stride(1) != D or t.stride(3) != 1 or t.stride(0) != q.stride(0)
                   for t in heads)
            or any(c.dtype != torch.float32 or c.stride(1) != D or c.stride(3) != 1 or c.stride() != kc.stride()
                   or c.shape[2] < length for c in (kc, vc))
            or (mask is not None and (mask.dtype != torch.float32 or not mask.is_contiguous()
                                      or mask.numel() != B * length))
            or (torch.is_grad_enabled() and any(t.requires_grad for t in (*heads, kc, vc)))):
        return None
    out = torch.empty(B, 1, H * D)
    failed = lib.decode_attention(q.data_ptr(), new_k.data_ptr() if new_k is not None else None,
                                  new_v.data_ptr() if new_v is not None else None, q.stride(0),
                                  kc.data_ptr(), vc.data_ptr(), kc.stride(2), kc.stride(0),
                                  mask.data_ptr() if mask is not None else None, out.data_ptr(),
                                  B, H, length, D, D ** -0.5, torch.get_num_threads())
    return None if failed else out


def few_row_linear(x: Tensor, w: Tensor, scale: Tensor | None = None) -> Tensor | None:
    """x (R, I) · w (O, I)ᵀ -> (R, O) fp32 on a CPU with AVX-512 or AVX2: w fp32 or bf16 (widened exactly, fp32
    arithmetic) or int8 with `scale` (O,) fp32 (output o is multiplied by scale[o]), x fp32 (or bf16, widened first)
    with unit stride within rows, w contiguous; None where the kernel does not apply (not built, neither AVX-512 nor
    AVX2, I % 16 (AVX2: 8) or O % 8 not 0, other dtypes, autograd...)."""
    load()
    if (not _few_rows or w.dtype not in W_KINDS or x.device.type != "cpu" or x.dim() != 2
            or not w.is_contiguous() or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
        return None
    if w.dtype == torch.int8 and (scale is None or scale.dtype != torch.float32 or not scale.is_contiguous()
                                  or scale.shape != (w.shape[0],)):
        return None
    if x.dtype != torch.float32:
        if x.dtype != torch.bfloat16:
            return None
        x = x.float()
    if x.stride(1) != 1:
        return None
    y = torch.empty(x.shape[0], w.shape[0])
    failed = _lib.few_row_linear(x.data_ptr(), x.stride(0), w.data_ptr(), W_KINDS[w.dtype],
                                 scale.data_ptr() if w.dtype == torch.int8 else None, y.data_ptr(),
                                 x.shape[0], x.shape[1], w.shape[0], torch.get_num_threads())
    return None if failed else y
