"""Our own forward pass over a transformers `MusicgenForCausalLM`, built for sampling.

The module keeps being a normal transformers model (training and reference tests call its own
`forward`), but its parameters are re-pointed into one flat buffer. That buys three things:
- the self-attention k/v/q weights of a layer and the K LM heads are adjacent in memory, so they are
  used as single fused matrices without any copy (one matmul instead of three, one instead of K);
- merging θ_q and θ_d into the serving weights is one `torch.lerp` over the buffer (see merge.py);
- a checkpoint is loaded by copying into the buffer, never by rebuilding the module.

Sampling uses a preallocated KV cache (`DecodeState`) indexed by position: prefill, then one column
per step. Cross-attention keys/values over the text are computed once per request. On CPUs a decode step's
attention and (with AVX-512) its matmuls run in small C kernels where they can be built (engine/kernels.py),
through torch elsewhere.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import MusicgenForCausalLM
from transformers.activations import ACT2FN
from transformers.models.musicgen.modeling_musicgen import MusicgenSinusoidalPositionalEmbedding

from engine.kernels import decode_attention, few_row_linear, first_cpu, has_few_row_linear


def cpu_row_block(device: torch.device) -> int:
    """Rows per matmul block for few-row (decode-step) fp32 matmuls where the C kernel is missing, or 0 for `F.linear`.

    MKL's few-row fp32 `F.linear` on AMD EPYC streams weights at about half the bandwidth that `w @ xᵀ` on one block
    of 4 rows reaches (`python -m bench.matmul`). So on AMD CPUs up to 4 rows go through as one zero-padded block
    of 4, and up to 16 rows through oneDNN (see `linear`). Decided from the CPU vendor, never from timings, so
    results are reproducible."""
    if torch.device(device).type != "cpu":
        return 0
    return 4 if "AuthenticAMD" in first_cpu() else 0


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX), where `--dtype bf16` pays."""
    flags = next((line for line in first_cpu().splitlines() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


C_KERNEL_ROWS = 48  # up to here the C matmul kernel beats MKL and oneDNN (`bench.matmul`): decode steps of the app
# (≤ 8 clips × 2 CFG branches) and of the trainer's on-policy sampling (e.g. 8 prompts × 4 samples)
FEW_ROWS = 16  # the torch fallback's few-row paths; beyond: full-sequence forwards, where BLAS is fine
ONEDNN_ROWS = 8  # rows per oneDNN call beyond one block (the fallback without the C kernel)


@functools.cache
def _onednn_linear():
    """oneDNN's dense fp32 linear (`torch.ops.mkldnn._linear_pointwise`, what inductor calls on CPUs), or None
    where this torch build lacks it or it fails."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        if not torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w)):
            return None
    except (RuntimeError, TypeError):
        return None
    return lambda x, w: op(x, w, None, "none", [], "")


class Int8Matrix(NamedTuple):
    """A weight matrix quantised for `--dtype int8`: int8 rows with one fp32 scale each (w ≈ q · scale[:, None];
    symmetric, scale = max |row| / 127, as gpt-fast's weight-only int8)."""

    q: Tensor  # (O, I) int8
    scale: Tensor  # (O,) fp32

    @classmethod
    def of(cls, w: Tensor) -> "Int8Matrix":
        scale = (w.detach().abs().amax(dim=1).float() / 127).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round(w.detach().float() / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scale.contiguous())

    def dequantized(self) -> Tensor:
        return self.q.float() * self.scale[:, None]


def linear(x: Tensor, w: Tensor | Int8Matrix, row_block: int = 0, c_kernel: bool = False,
           chunked: bool = False) -> Tensor:
    """x (..., I) @ w (O, I)ᵀ, equal to `F.linear` up to float rounding (x is cast to w's dtype for torch). On a CPU
    without autograd: with `c_kernel`, up to `C_KERNEL_ROWS` rows through the C kernel
    (`engine.kernels.few_row_linear`, AVX-512; fp32 or bf16 weights, fp32 result), which streams the weights once
    at nearly the memory bandwidth; else, for fp32 with `row_block` > 0 (AMD CPUs), up to `row_block` rows as
    `w @ xᵀ` on one zero-padded block and up to `FEW_ROWS` through oneDNN in chunks of `ONEDNN_ROWS` (its AVX-512
    kernels beat MKL's here). An `Int8Matrix` goes through the C kernel's int8 path, and (more rows, no kernel) through
    its dequantised fp32 copy, so every path computes with the same quantised weights. `chunked` (fused requests,
    `DecodeState.groups`): more than `C_KERNEL_ROWS` rows go through the C kernel in chunks of that many, so that each
    row is computed exactly as when its request runs alone (the kernel's rows are independent; BLAS's are not
    guaranteed to be). README, "Where the time goes"."""
    rows = x.numel() // x.shape[-1]
    if chunked and c_kernel and rows > C_KERNEL_ROWS:
        x2 = x.reshape(rows, -1)
        parts = [linear(x2[i:i + C_KERNEL_ROWS], w, row_block, c_kernel) for i in range(0, rows, C_KERNEL_ROWS)]
        return torch.cat(parts).view(*x.shape[:-1], -1)
    if isinstance(w, Int8Matrix):
        y = few_row_linear(x.reshape(rows, -1), w.q, w.scale) if rows <= C_KERNEL_ROWS and c_kernel else None
        return F.linear(x, w.dequantized()) if y is None else y.view(*x.shape[:-1], w.q.shape[0])
    if rows > (C_KERNEL_ROWS if c_kernel else FEW_ROWS if row_block else 0):
        return F.linear(x.to(w.dtype), w)
    x2 = x.reshape(rows, -1)
    y = few_row_linear(x2, w) if c_kernel else None  # fp32, also for bf16 weights
    if y is None and row_block and rows <= FEW_ROWS:
        y = _few_rows_torch(x2, w, row_block)
    return F.linear(x.to(w.dtype), w) if y is None else y.view(*x.shape[:-1], w.shape[0])


def _few_rows_torch(x2: Tensor, w: Tensor, row_block: int) -> Tensor | None:
    """`linear`'s torch path for 1..FEW_ROWS rows x2 (rows, I) on AMD CPUs; None: use F.linear."""
    rows = x2.shape[0]
    if rows <= row_block:
        padded = -rows % row_block
        return (w @ F.pad(x2, (0, 0, 0, padded)).T if padded else w @ x2.T)[:, :rows].T.contiguous()  # (rows, O)
    if (torch.is_grad_enabled() and (x2.requires_grad or w.requires_grad)) or (dnn := _onednn_linear()) is None:
        return None
    chunks = [dnn(x2[i:i + ONEDNN_ROWS], w) for i in range(0, rows, ONEDNN_ROWS)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _keep(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t


def _norm(ln: torch.nn.LayerNorm) -> tuple:
    """F.layer_norm's arguments after the input (a plain call skips the module's call machinery, ~1 µs each)."""
    return ln.normalized_shape, ln.weight, ln.bias, ln.eps


def flatten_parameters(module: torch.nn.Module) -> Tensor:
    """Move every parameter of `module` into one contiguous 1-D buffer (in `named_parameters` order)
    and make the parameters views of it. Returns the buffer. Values are unchanged."""
    params = list(module.parameters())
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise ValueError(f"all decoder parameters must share one dtype to be flattened, got {sorted(map(str, dtypes))}")
    flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    offset = 0
    for p in params:
        n = p.numel()
        flat[offset:offset + n].copy_(p.detach().reshape(-1))
        p.data = flat[offset:offset + n].view_as(p)
        offset += n
    return flat


def _position_major(x: Tensor) -> Tensor:
    """(B, H, T, D) -> the same values as a view of a contiguous (T, B, H, D) buffer."""
    return x.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)


def _fused(flat: Tensor, weights: list[Tensor]) -> Tensor:
    """A view of `flat` covering `weights` (which must be adjacent in it), shaped (sum of rows, cols)."""
    start = weights[0].data_ptr()
    item = flat.element_size()
    for a, b in zip(weights, weights[1:]):
        if a.data_ptr() + a.numel() * item != b.data_ptr():
            raise RuntimeError("weights to fuse are not adjacent in the flat buffer")
    first = (start - flat.data_ptr()) // item
    rows = sum(w.shape[0] for w in weights)
    return flat[first:first + rows * weights[0].shape[1]].view(rows, weights[0].shape[1])


@dataclass
class DecodeState:
    """Per-request tensors: cross-attention K/V over the text and the self-attention KV cache."""

    cross_k: list[Tensor]  # per layer (B, H, S, D); on CPUs position-major in memory, as the cache
    cross_v: list[Tensor]
    cross_mask: Tensor  # (B, 1, 1, S) additive: 0 where attended, finfo.min where padding
    # (layers, B, H, max_len, D); on CPUs a view of a position-major (layers, max_len, B, H, D) buffer, so that what
    # one decode step reads is one contiguous stream (engine/csrc/cpu_kernels.c). None: a cache-free forward.
    k: Tensor | None
    v: Tensor | None
    # Fused requests (`FastDecoder.new_fused_state`): each request's rows and its own cross-attention state, computed
    # as when it runs alone (its text width, its K/V), so that its rows come out exactly as alone; None: one request
    groups: list[tuple[slice, "DecodeState"]] | None = None

    @property
    def max_len(self) -> int:
        return 0 if self.k is None else self.k.shape[3]


INT8_MATRICES = ("kvq", "out", "cq", "cout", "fc1", "fc2")  # a layer's decode-step matmuls; `ckv` (the text's keys
# and values) runs once per request and stays fp32


class FastDecoder:
    """Sampling-oriented forward over a `MusicgenForCausalLM` whose parameters live in `self.flat`.

    `quantize`: the decode-step matmuls (each layer's and the LM heads') read int8 copies of the weights (`--dtype
    int8`, CPUs with the C kernel): a quarter of fp32's bytes per step. `self.flat` stays the fp32 master that merges
    write; `requantize()` refreshes the copies from it."""

    def __init__(self, model: MusicgenForCausalLM, quantize: bool = False):
        cfg = model.config
        if cfg.audio_channels != 1:
            raise ValueError("stereo MusicGen checkpoints (audio_channels=2) are not supported yet")
        self.model = model.eval()
        self.config = cfg
        self.flat = flatten_parameters(model)
        dec = model.model.decoder
        self.num_codebooks = cfg.num_codebooks
        self.vocab_size = cfg.vocab_size
        self.hidden = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        act = ACT2FN[cfg.activation_function]
        self.act = getattr(act, "act", act)  # transformers' GELUActivation wraps F.gelu: call it without the module
        # Low-precision weights on a CPU: only the matmuls read bf16/fp16 weights (half the bytes; the C kernel widens
        # bf16 to fp32 in registers, oneDNN otherwise); the residual stream, attention, KV cache and logits stay
        # fp32, where the CPU's half-precision attention and norms are slow and imprecise. On GPUs everything runs
        # in the weights' dtype.
        low = self.flat.dtype != torch.float32 and self.flat.device.type == "cpu"
        self.compute_dtype = torch.float32 if low else self.flat.dtype
        cpu = self.flat.device.type == "cpu"
        fp32_cpu = cpu and self.flat.dtype == torch.float32
        c_kernel = cpu and self.flat.dtype in (torch.float32, torch.bfloat16) and has_few_row_linear()
        self.matmul = (cpu_row_block(self.flat.device) if fp32_cpu else 0, c_kernel)
        # Embedding tables of the K codebooks, adjacent: (K * (V+1), E), indexed with per-codebook offsets.
        self.embed = _fused(self.flat, [e.weight for e in dec.embed_tokens])
        self.embed_offsets = torch.arange(cfg.num_codebooks,
                                          device=self.flat.device).view(1, -1, 1) * (cfg.vocab_size + 1)
        self.heads_w = _fused(self.flat, [h.weight for h in model.lm_heads])  # (K * V, E)
        self.layers = []
        for layer in dec.layers:
            sa, ca = layer.self_attn, layer.encoder_attn
            self.layers.append(dict(
                ln1=_norm(layer.self_attn_layer_norm),
                kvq=_fused(self.flat, [sa.k_proj.weight, sa.v_proj.weight, sa.q_proj.weight]),
                out=sa.out_proj.weight, ln2=_norm(layer.encoder_attn_layer_norm), cq=ca.q_proj.weight,
                ckv=_fused(self.flat, [ca.k_proj.weight, ca.v_proj.weight]), cout=ca.out_proj.weight,
                ln3=_norm(layer.final_layer_norm), fc1=layer.fc1.weight, fc2=layer.fc2.weight,
            ))
        self.final_ln = _norm(dec.layer_norm)
        self.quantized = quantize
        if quantize:
            if not (cpu and self.flat.dtype == torch.float32 and c_kernel):
                raise ValueError("int8 weights need a CPU whose C matmul kernel runs (AVX-512, or AVX2 and FMA; "
                                 f"{'not a CPU' if not cpu else 'the kernel is not built here'}): use fp32 or bf16")
            self._float = (self.layers, self.heads_w)  # views of the fp32 master, which merges write
            self.requantize()
        self._positions = MusicgenSinusoidalPositionalEmbedding.get_embedding(cfg.max_position_embeddings,
                                                                              cfg.hidden_size)
        self._positions = self._positions.to(self.flat.device, self.compute_dtype)

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @torch.no_grad()
    def requantize(self) -> None:
        """Refresh the int8 copies from the fp32 master (after a merge wrote it); nothing for a float decoder."""
        if not self.quantized:
            return
        layers, heads = self._float
        self.layers = [p | {name: Int8Matrix.of(p[name]) for name in INT8_MATRICES} for p in layers]
        self.heads_w = Int8Matrix.of(heads)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (activations: `compute_dtype`)."""
        return self.flat.dtype

    def positions(self, start: int, length: int) -> Tensor:
        if start + length > self._positions.shape[0]:  # transformers extends its table the same way
            table = MusicgenSinusoidalPositionalEmbedding.get_embedding(start + length, self.hidden)
            self._positions = table.to(self.flat.device, self.compute_dtype)
        return self._positions[start:start + length]

    def _heads(self, x: Tensor) -> Tensor:  # (B, t, E) -> (B, H, t, D)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:  # torch's SDPA, heads merged: (B, t, E)
        a = F.scaled_dot_product_attention(q, k, v, **kw)
        return a.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.hidden)

    def new_state(self, encoder_hidden: Tensor, encoder_mask: Tensor, max_len: int | None) -> DecodeState:
        """Cross-attention K/V for text states (B, S, E) with mask (B, S); a KV cache of `max_len`
        positions (None: no cache, for full-sequence forwards)."""
        encoder_hidden = encoder_hidden.to(self.device, self.dtype)
        ad = self.compute_dtype
        # On CPUs, K/V live position-major for the C decode kernel; GPUs keep the (B, H, T, D) layout their SDPA
        # kernels are tuned for.
        cpu = self.device.type == "cpu"
        ks, vs = [], []
        for p in self.layers:
            k, v = F.linear(encoder_hidden, p["ckv"]).to(ad).chunk(2, dim=-1)
            k, v = self._heads(k), self._heads(v)
            ks.append(_position_major(k) if cpu else k)
            vs.append(_position_major(v) if cpu else v)
        mask = encoder_mask.to(self.device).bool()[:, None, None, :]
        cross_mask = torch.zeros(mask.shape, dtype=ad, device=self.device)
        cross_mask.masked_fill_(~mask, torch.finfo(ad).min)
        k, v = self._cache(encoder_hidden.shape[0], max_len) if max_len is not None else (None, None)
        return DecodeState(ks, vs, cross_mask, k, v)

    def _cache(self, rows: int, max_len: int) -> tuple[Tensor, Tensor]:
        """An empty self-attention KV cache: on CPUs (L, T, B, H, D) in memory, seen as (L, B, H, T, D)."""
        L, H, D, ad = len(self.layers), self.heads, self.head_dim, self.compute_dtype
        if self.device.type == "cpu":
            return tuple(torch.empty(L, max_len, rows, H, D, dtype=ad, device=self.device).permute(0, 2, 3, 1, 4)
                         for _ in range(2))
        return tuple(torch.empty(L, rows, H, max_len, D, dtype=ad, device=self.device) for _ in range(2))

    def new_fused_state(self, conditions: list[tuple[Tensor, Tensor]], max_len: int) -> DecodeState:
        """The state of several requests sampled together: each request's (text states, mask) keeps the
        cross-attention state it has alone; the self-attention cache covers all their rows."""
        groups, start = [], 0
        for hidden, mask in conditions:
            groups.append((slice(start, start + hidden.shape[0]), self.new_state(hidden, mask, None)))
            start += hidden.shape[0]
        return DecodeState([], [], groups[0][1].cross_mask, *self._cache(start, max_len), groups)

    def _cross(self, q: Tensor, i: int, state: DecodeState, t: int) -> Tensor:
        """Cross-attention of layer i over the text (each fused request over its own)."""
        if state.groups is not None:
            return torch.cat([self._cross(q[rows], i, own, t) for rows, own in state.groups])
        ck, cv, cmask = state.cross_k[i], state.cross_v[i], state.cross_mask
        a = decode_attention(q, ck, cv, ck.shape[2], mask=cmask) if t == 1 else None
        return self._attend(q, ck, cv, attn_mask=cmask) if a is None else a

    def forward(self, tokens: Tensor, pos: int, state: DecodeState) -> Tensor:
        """Logits (B, K, t, V) for token columns `tokens` (B, K, t) placed at positions pos..pos+t-1.

        With a cache, keys/values are written at those positions and attention covers 0..pos+t-1;
        without one, `pos` must be 0 and attention covers the t given columns."""
        B, K, t = tokens.shape
        if state.k is None and pos != 0:
            raise ValueError("a cache-free forward must start at position 0")
        if state.k is not None and pos + t > state.max_len:
            raise ValueError(f"positions {pos}..{pos + t - 1} exceed the cache length {state.max_len}")
        wd, ad, mm = self.dtype, self.compute_dtype, (*self.matmul, state.groups is not None)
        to = _keep if wd == ad else Tensor.to  # fp32: no cast calls at all (~1 µs each, ~60 per step)
        x = F.embedding(tokens + self.embed_offsets, self.embed).sum(1, dtype=ad)  # (B, t, E)
        x = x + self.positions(pos, t)
        end = pos + t
        mask = None
        causal = t > 1 and pos == 0
        if t > 1 and pos > 0:  # a chunk after a cached prefix: queries see the prefix and their past
            q_pos = torch.arange(pos, end, device=self.device)[:, None]
            mask = torch.arange(end, device=self.device)[None, :] <= q_pos
        for i, p in enumerate(self.layers):
            h = F.layer_norm(to(x, wd), *p["ln1"])
            k, v, q = map(self._heads, to(linear(h, p["kvq"], *mm), ad).chunk(3, dim=-1))
            a = None
            if t == 1 and state.k is not None:  # a decode step: the C kernel writes the cache and attends
                a = decode_attention(q, state.k[i], state.v[i], end, new_k=k, new_v=v)
            if a is None:
                if state.k is not None:
                    state.k[i, :, :, pos:end] = k
                    state.v[i, :, :, pos:end] = v
                    k, v = state.k[i, :, :, :end], state.v[i, :, :, :end]
                a = self._attend(q, k, v, attn_mask=mask, is_causal=causal)
            x = x + linear(to(a, wd), p["out"], *mm)
            h = F.layer_norm(to(x, wd), *p["ln2"])
            q = self._heads(to(linear(h, p["cq"], *mm), ad))
            x = x + linear(to(self._cross(q, i, state, t), wd), p["cout"], *mm)
            x = x + linear(self.act(linear(F.layer_norm(to(x, wd), *p["ln3"]), p["fc1"], *mm)), p["fc2"], *mm)
        x = F.layer_norm(to(x, wd), *self.final_ln)
        logits = to(linear(x, self.heads_w, *mm), ad)  # (B, t, K * V)
        return logits.view(B, t, K, self.vocab_size).transpose(1, 2)
