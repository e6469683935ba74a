"""The shipped MusicGen-nano weights: they load offline, generate music-shaped output, and stay small."""
import json
from pathlib import Path

import numpy as np
import pytest

from engine.checkpoint import CheckpointError
from engine.model import load_model
from engine.score_codec import FIRST_EVENT
from engine.service import MusicService, Request

WEIGHTS = Path(__file__).parent.parent / "weights"
NANO = WEIGHTS / "nano"


def test_weights_folder_is_small():
    total = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert total <= 50 * 2**20, f"weights/ holds {total / 2**20:.1f} MB; the budget is 50 MB"


def test_nano_card_and_config():
    meta = json.loads((NANO / "nano.json").read_text())
    assert meta["decoder"]["vocab_size"] == 512 and meta["steps"] > 0
    card = (NANO / "README.md").read_text()
    assert "python -m training.pretrain_nano" in card and "python -m training.nano_metrics" in card


@pytest.fixture(scope="module")
def service():
    return MusicService(load_model(NANO))


def test_generates_music_offline(service):
    gen = service.generate_base(Request("calm piano with soft strings", num_clips=2, duration_s=2.0, seed=0))
    assert gen.audio.shape == (2, 1, 32000) and np.isfinite(gen.audio).all() and np.abs(gen.audio).max() <= 0.95
    codes = gen.codes.numpy()
    assert (codes >= FIRST_EVENT).any(axis=2).sum() >= 4  # events in several streams, not silence
    cfg = service.generate_base(Request("calm piano with soft strings", num_clips=2, duration_s=2.0,
                                        seed=0, guidance=3.0))
    assert not np.array_equal(cfg.codes.numpy(), codes)


def test_damaged_weights_fail_clearly(tmp_path):
    for f in NANO.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "decoder.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="decoder.safetensors: not a readable safetensors file"):
        load_model(tmp_path)
    (tmp_path / "nano.json").write_text("{")
    with pytest.raises(CheckpointError, match="nano.json: not a readable nano config"):
        load_model(tmp_path)
