"""Diversity reporting and the embedding model's behaviour (untrained: shapes, determinism, invariances)."""
import pytest
import torch

from engine.diversity import mean_diversity, pairwise_diversity, vendi_score
from engine.embedding import AudioEmbedder, EmbeddingConfig


def test_matrix_mean_and_vendi_bounds():
    e = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    r = pairwise_diversity(e)
    assert torch.allclose(r, r.T) and r.diagonal().abs().max() == 0 and (r >= -1e-6).all() and (r <= 2 + 1e-6).all()
    assert mean_diversity(e) == pytest.approx(float(r.sum() / 30))
    assert 1 <= vendi_score(e) <= 6
    same = torch.ones(5, 16)
    assert mean_diversity(same) == pytest.approx(0, abs=1e-6) and vendi_score(same) == pytest.approx(1, abs=1e-6)
    assert vendi_score(torch.eye(4)) == pytest.approx(4)
    with pytest.raises(ValueError, match="at least 2"):
        mean_diversity(e[:1])


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return AudioEmbedder(EmbeddingConfig(layers=1, dim=32, heads=2, out_dim=16)).eval()


def test_embedding_shapes_windows_and_resampling(embedder):
    audio = torch.randn(3, 16000 * 9)  # 9 s: three 4 s windows, the last one padded
    e = embedder.embed(audio, 16000)
    assert e.shape == (3, 16) and torch.allclose(e.norm(dim=-1), torch.ones(3))
    assert torch.equal(e, embedder.embed(audio, 16000))  # deterministic
    e32 = embedder.embed(torch.randn(2, 32000 * 4), 32000)  # resampled to 16 kHz
    assert e32.shape == (2, 16)


def test_identical_clips_have_zero_diversity(embedder):
    clip = torch.randn(1, 16000 * 4).expand(4, -1)
    assert mean_diversity(embedder.embed(clip, 16000)) == pytest.approx(0, abs=1e-6)


def test_bad_config():
    with pytest.raises(ValueError, match="divisible"):
        EmbeddingConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="win_length"):
        EmbeddingConfig(n_fft=512, win_length=1024)


def test_zero_padded_frames_keep_the_window_and_the_frames():
    """win_length = n_fft is the default analysis; a larger n_fft zero-pads the same 512-sample frames."""
    audio = torch.randn(2, 16000)
    base = AudioEmbedder(EmbeddingConfig(layers=1, dim=32, heads=2, window_s=1.0))
    same = AudioEmbedder(EmbeddingConfig(layers=1, dim=32, heads=2, window_s=1.0, win_length=512))
    torch.testing.assert_close(same.log_mel(audio), base.log_mel(audio), rtol=0, atol=0)
    padded = AudioEmbedder(EmbeddingConfig(layers=1, dim=32, heads=2, window_s=1.0, n_fft=2048, win_length=512))
    mel = padded.log_mel(audio)
    assert mel.shape == base.log_mel(audio).shape and torch.isfinite(mel).all()
    # a pure tone: the zero-padded spectrum peaks in the mel band that holds its frequency
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 1000.0 * t)[None]
    band = padded.mel.argmax(dim=1)  # (n_fft // 2 + 1,) -> the mel band holding each bin most
    peak_bin = round(1000.0 / (16000 / 2048))
    assert padded.log_mel(tone)[0, 10].argmax() == band[peak_bin]
