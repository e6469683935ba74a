"""How good and how different a set of clips is: quality scorers and one-call scoring (paper Section 3.1 "Metrics").

The paper scores quality as s_quality = ω·s_MuLan + s_UserPreference (ω = 5) and diversity with E. Our nano
analogues, trained on the procedural corpus by `training.train_scorers`:
- **adherence**: cosine similarity between a clip and its prompt in a joint text–audio space (CLIP-style):
  frozen all-MiniLM-L6-v2 sentence features → linear projection, and a small audio tower (E's architecture, own
  weights) → projection. In [-1, 1].
- **audio quality**: the probability that a clip is clean rather than degraded (wrong notes, erratic timing,
  noise bursts, distortion), from a linear head on the same audio tower. The clip's clean logit is the minimum
  over its 4 s windows: one bad window makes a bad clip.
Both come from one forward of the audio tower. For real MusicGen audio, `ClapAdherence` scores adherence with a
transformers `ClapModel` (e.g. laion/clap-htsat-unfused) instead.

`Scorers.score(audio, sample_rate, prompt)` returns the diversity matrix, its mean, the Vendi score and the
per-clip quality scores of one set in one call. None of this is ever a training objective except E's diversity.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn
from transformers import ClapModel, ClapProcessor

from engine.checkpoint import CheckpointError, load_state
from engine.diversity import mean_diversity, pairwise_diversity, vendi_score
from engine.embedding import AudioEmbedder, EmbeddingConfig, load_embedder
from engine.exact import OMEGA
from engine.model import minilm_encoder

QUALITY_CONFIG = "model.json"
QUALITY_WEIGHTS = "quality.safetensors"


class SentenceEncoder:
    """Prompts -> unit sentence embeddings (mean-pooled all-MiniLM-L6-v2, frozen), cached per text."""

    def __init__(self, tokenizer=None, model: nn.Module | None = None):
        if model is None:
            tokenizer, model = minilm_encoder()
        self.tokenizer, self.model = tokenizer, model.eval().requires_grad_(False)
        self._cache: dict[str, Tensor] = {}
        self._lock = threading.Lock()  # fast tokenizers are not safe to call from several threads at once

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> Tensor:
        with self._lock:
            return self._encode(texts)

    def _encode(self, texts: list[str]) -> Tensor:
        todo = sorted({t for t in texts if t not in self._cache})
        for i in range(0, len(todo), 256):
            chunk = todo[i:i + 256]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].to(h.dtype)
            e = F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
            self._cache.update(zip(chunk, e.float()))
        if len(self._cache) > 100_000:  # a long-running server: keep memory bounded
            self._cache = {t: self._cache[t] for t in texts}
        return torch.stack([self._cache[t] for t in texts])


@dataclass(frozen=True)
class QualityConfig:
    audio: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    text_dim: int = 384  # MiniLM's width

    @classmethod
    def from_dict(cls, d: dict) -> "QualityConfig":
        return cls(audio=EmbeddingConfig(**d["audio"]), text_dim=int(d["text_dim"]))


class QualityScorer(nn.Module):
    """Adherence and audio quality from one audio tower (see the module docstring)."""

    def __init__(self, config: QualityConfig = QualityConfig()):
        super().__init__()
        self.config = config
        self.audio = AudioEmbedder(config.audio)
        self.text_proj = nn.Linear(config.text_dim, config.audio.out_dim)
        self.quality_head = nn.Linear(config.audio.dim, 1)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def clips(self, windows: Tensor, per_clip: int) -> tuple[Tensor, Tensor]:
        """Windows (N·W, samples), W consecutive per clip -> unit audio embeddings (N, D) and clean logits (N,)."""
        h = self.audio.features(windows)
        e = F.normalize(self.audio.head(h), dim=-1).view(-1, per_clip, self.config.audio.out_dim).mean(1)
        clean = self.quality_head(h).view(-1, per_clip).min(dim=1).values
        return F.normalize(e, dim=-1), clean

    def text(self, sentence_features: Tensor) -> Tensor:
        return F.normalize(self.text_proj(sentence_features), dim=-1)

    @torch.no_grad()
    def score(self, audio: Tensor, sample_rate: int, sentence_features: Tensor) -> tuple[Tensor, Tensor]:
        """Clips (N, samples), their prompts' sentence features (N, text_dim) -> adherence (N,), P(clean) (N,)."""
        windows, w = self.audio.windows(audio.float(), sample_rate)
        e, clean = self.clips(windows, w)
        return (e * self.text(sentence_features)).sum(-1), torch.sigmoid(clean)

    def config_dict(self) -> dict:
        return dict(audio=asdict(self.config.audio), text_dim=self.config.text_dim)


def load_quality_scorer(folder) -> QualityScorer:
    """The quality scorer from a folder with model.json (`config`) and quality.safetensors."""

    folder = Path(folder)
    try:
        config = QualityConfig.from_dict(json.loads((folder / QUALITY_CONFIG).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / QUALITY_CONFIG}: not a readable quality-scorer config ({e})") from None
    model = QualityScorer(config)
    model.load_state_dict(load_state(folder / QUALITY_WEIGHTS, dict(model.named_parameters())))
    return model.eval()


class ClapAdherence:
    """Adherence for real MusicGen audio: cosine between transformers `ClapModel` text and audio features."""

    def __init__(self, model, feature_extractor, tokenizer):
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor, self.tokenizer = feature_extractor, tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str, allow_download: bool = False) -> "ClapAdherence":
        processor = ClapProcessor.from_pretrained(name_or_path, local_files_only=not allow_download)
        model = ClapModel.from_pretrained(name_or_path, local_files_only=not allow_download)
        return cls(model, processor.feature_extractor, processor.tokenizer)

    @torch.no_grad()
    def __call__(self, audio: Tensor, sample_rate: int, prompts: list[str]) -> Tensor:
        sr = self.feature_extractor.sampling_rate
        audio = audio.float()
        if sample_rate != sr:
            audio = AF.resample(audio, sample_rate, sr)
        feats = self.feature_extractor(list(audio.numpy()), sampling_rate=sr, return_tensors="pt")
        a = self.model.get_audio_features(**feats).pooler_output
        t = self.model.get_text_features(**self.tokenizer(prompts, padding=True, return_tensors="pt")).pooler_output
        return (F.normalize(a, dim=-1) * F.normalize(t, dim=-1)).sum(-1)


@dataclass
class SetScores:
    """Scores of one set of N clips for one prompt. Missing scorers leave their fields None."""
    diversity: np.ndarray | None = None  # (N, N) r_D, zero diagonal
    mean_diversity: float | None = None  # over i ≠ j
    vendi: float | None = None  # in [1, N]
    adherence: np.ndarray | None = None  # (N,)
    audio_quality: np.ndarray | None = None  # (N,) P(clean)
    quality: np.ndarray | None = None  # (N,) ω·adherence + audio_quality
    omega: float = OMEGA
    seconds: float = 0.0

    @property
    def mean_quality(self) -> float | None:
        return None if self.quality is None else float(self.quality.mean())


class Scorers:
    """E and the quality scorers behind one call. Any part may be absent (then its scores are None)."""

    def __init__(self, embedder: AudioEmbedder | None = None, quality: QualityScorer | None = None,
                 sentences: SentenceEncoder | None = None, clap: ClapAdherence | None = None, omega: float = OMEGA):
        if quality is not None and sentences is None:
            sentences = SentenceEncoder()
        self.embedder, self.quality_scorer, self.sentences = embedder, quality, sentences
        self.clap, self.omega = clap, omega

    @classmethod
    def from_folders(cls, embedding=None, quality=None, clap: str | None = None, allow_download: bool = False,
                     omega: float = OMEGA) -> "Scorers":
        return cls(load_embedder(embedding) if embedding else None,
                   load_quality_scorer(quality) if quality else None,
                   clap=ClapAdherence.from_pretrained(clap, allow_download) if clap else None, omega=omega)

    @property
    def has_diversity(self) -> bool:
        return self.embedder is not None

    @property
    def has_quality(self) -> bool:
        return self.quality_scorer is not None

    @torch.no_grad()
    def embed(self, audio, sample_rate: int) -> Tensor:
        if self.embedder is None:
            raise ValueError("no diversity embedding E loaded")
        return self.embedder.embed(_as_tensor(audio), sample_rate)

    @torch.no_grad()
    def score(self, audio, sample_rate: int, prompt: str | list[str]) -> SetScores:
        """Clips (N, samples) (numpy or torch) of one prompt (or one prompt per clip) -> `SetScores`."""
        t0 = time.perf_counter()
        audio = _as_tensor(audio)
        n = audio.shape[0]
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ValueError(f"{n} clips but {len(prompts)} prompts")
        out = SetScores(omega=self.omega)
        if self.embedder is not None and n >= 2:
            e = self.embedder.embed(audio, sample_rate)
            out.diversity = pairwise_diversity(e).numpy()
            out.mean_diversity, out.vendi = mean_diversity(e), vendi_score(e)
        if self.quality_scorer is not None:
            adherence, clean = self.quality_scorer.score(audio, sample_rate, self.sentences(prompts))
            out.adherence, out.audio_quality = adherence.numpy(), clean.numpy()
        if self.clap is not None:
            out.adherence = self.clap(audio, sample_rate, prompts).numpy()
        if out.adherence is not None and out.audio_quality is not None:
            out.quality = self.omega * out.adherence + out.audio_quality
        out.seconds = time.perf_counter() - t0
        return out


def _as_tensor(audio) -> Tensor:
    """Clips (N, samples) or (N, channels, samples) -> (N, samples): the scorers hear the channels' mean (mono)."""
    audio = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio)
    if audio.dim() == 3 and audio.shape[1] > 0:
        audio = audio.float().mean(dim=1)
    if audio.dim() != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"expected clips as (N, samples) or (N, channels, samples), got shape {tuple(audio.shape)}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or inf")
    return audio.float()
