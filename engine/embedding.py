"""E, the diversity embedding (paper Appendix C.1, scaled down): log-mel → small transformer over time → embedding.

Input: mono audio at 16 kHz (resampled if needed), analysed in 4 s windows (window 512, hop 256, 64 mel bands).
Mel frames are grouped in patches of `patch` frames, embedded, run through a pre-norm transformer encoder,
averaged over time and projected. A clip longer than one window is embedded as the mean of its windows'
embeddings (then normalised). Trained contrastively by `training.train_embedding` (next step).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from engine.checkpoint import CheckpointError, load_state


@dataclass(frozen=True)
class EmbeddingConfig:
    sample_rate: int = 16000
    window_s: float = 4.0
    n_fft: int = 512
    hop: int = 256
    win_length: int | None = None  # analysis window (None: n_fft); n_fft > win_length zero-pads each frame
    n_mels: int = 64
    patch: int = 4  # mel frames per token
    dim: int = 128
    layers: int = 4
    heads: int = 4
    out_dim: int = 64

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.window_s <= 0 or self.patch < 1:
            raise ValueError("window_s must be > 0 and patch ≥ 1")
        if self.win_length is not None and not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length {self.win_length} must be in 1..n_fft ({self.n_fft})")

    @property
    def window_samples(self) -> int:
        return int(self.window_s * self.sample_rate)

    @property
    def tokens(self) -> int:
        return (self.window_samples // self.hop + 1) // self.patch


class AudioEmbedder(nn.Module):
    def __init__(self, config: EmbeddingConfig = EmbeddingConfig()):
        super().__init__()
        self.config = config
        c = config
        with warnings.catch_warnings():  # with many mel bands the lowest filters fall between FFT bins: expected
            warnings.simplefilter("ignore", UserWarning)
            mel = AF.melscale_fbanks(c.n_fft // 2 + 1, 0.0, c.sample_rate / 2, c.n_mels, c.sample_rate)
        self.register_buffer("mel", mel, persistent=False)
        self.register_buffer("window", torch.hann_window(c.win_length or c.n_fft), persistent=False)
        self.patch_in = nn.Linear(c.patch * c.n_mels, c.dim)
        self.pos = nn.Parameter(torch.zeros(1, c.tokens, c.dim))
        layer = nn.TransformerEncoderLayer(c.dim, c.heads, 4 * c.dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.out_dim)

    def log_mel(self, audio: Tensor) -> Tensor:
        """(B, window samples) -> (B, frames, n_mels) log-mel."""
        c = self.config
        spec = torch.stft(audio, c.n_fft, c.hop, c.win_length, window=self.window, return_complex=True).abs() ** 2
        return torch.log(spec.transpose(1, 2) @ self.mel + 1e-6)  # spec: (B, F, frames)

    def features(self, audio: Tensor) -> Tensor:
        """Windows (B, window samples) at the config's rate -> pooled features (B, dim), before the head."""
        c = self.config
        mel = self.log_mel(audio)[:, : c.tokens * c.patch]  # (B, frames, n_mels)
        x = self.patch_in(mel.reshape(mel.shape[0], c.tokens, c.patch * c.n_mels)) + self.pos
        return self.norm(self.encoder(x)).mean(dim=1)

    def forward(self, audio: Tensor) -> Tensor:
        """Windows (B, window samples) at the config's rate -> embeddings (B, out_dim), not normalised."""
        return self.head(self.features(audio))

    def windows(self, audio: Tensor, sample_rate: int) -> tuple[Tensor, int]:
        """Resample (B, samples) and cover each clip with whole windows of music, never of silence: (B * W, window),
        W. A clip longer than a window gets W = ⌈length / window⌉ windows spread evenly from its start to its end
        (they overlap unless the length is a multiple of the window: then they are the plain consecutive windows);
        a shorter clip is repeated to fill one window (music loops; zero padding read as a broken clip: a 5 s take
        scored 0.01–0.26 P(clean) where its 4 s and 8 s crops scored ≥ 0.94)."""
        c = self.config
        if sample_rate != c.sample_rate:
            audio = AF.resample(audio, sample_rate, c.sample_rate)
        n, length = c.window_samples, audio.shape[-1]
        if length <= n:
            return audio.repeat(1, -(-n // length))[:, :n], 1
        w = -(-length // n)
        starts = torch.linspace(0, length - n, w).round().long()  # (W,) first and last windows flush with the ends
        index = starts[:, None] + torch.arange(n)  # (W, window)
        return audio[:, index].reshape(audio.shape[0] * w, n), w

    @torch.no_grad()
    def embed(self, audio: Tensor, sample_rate: int) -> Tensor:
        """Clips (B, samples) -> unit embeddings (B, out_dim): the mean over the clip's windows."""
        chunks, w = self.windows(audio.float(), sample_rate)
        e = F.normalize(self(chunks), dim=-1).view(audio.shape[0], w, -1).mean(dim=1)
        return F.normalize(e, dim=-1)

    def config_dict(self) -> dict:
        return asdict(self.config)


def load_embedder(folder) -> AudioEmbedder:
    """E from a folder with model.json (its config) and embedding.safetensors."""

    folder = Path(folder)
    try:
        config = EmbeddingConfig(**json.loads((folder / "model.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / 'model.json'}: not a readable embedding config ({e})") from None
    model = AudioEmbedder(config)
    model.load_state_dict(load_state(folder / "embedding.safetensors", dict(model.named_parameters())))
    return model.eval()
