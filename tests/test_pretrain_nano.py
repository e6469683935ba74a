"""Nano pretraining on a tiny config: it trains, resumes exactly, exports, and the export loads and generates."""
import csv

import numpy as np

from engine.model import load_model
from engine.service import MusicService, Request
from training import pretrain_nano
from training.export import main as export_main

TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--batch", "2", "--seconds", "1", "--eval-every", "1000",
        "--warmup", "2", "--save-every", "2"]


def _losses(folder):
    with open(folder / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_train_resume_export_load(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain_nano.main(TINY + ["--out", str(straight), "--total-steps", "4"])
    pretrain_nano.main(TINY + ["--out", str(resumed), "--total-steps", "2"])
    pretrain_nano.main(TINY + ["--out", str(resumed), "--total-steps", "4"])  # picks up at step 2
    a, b = _losses(straight), _losses(resumed)
    assert len(a) == len(b) == 4 and a[0] > 0
    np.testing.assert_allclose(a, b, rtol=1e-5)  # same data, same optimizer state: the same run

    export = tmp_path / "nano"
    export_main(["nano", str(straight), str(export)])
    model = load_model(export)
    assert model.sample_rate == 16000 and model.frame_rate == 32 and model.max_duration_s == 1.0
    service, _ = MusicService.from_sources(str(export))
    gen = service.generate_base(Request("calm piano", num_clips=2, duration_s=0.5, seed=0, guidance=3.0))
    assert gen.audio.shape == (2, 1, 8000) and np.isfinite(gen.audio).all()


def test_a_second_stage_starts_from_the_first_with_its_own_schedule(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    pretrain_nano.main(TINY + ["--out", str(first), "--total-steps", "2", "--no-caption-noise"])
    pretrain_nano.main(TINY + ["--out", str(second), "--total-steps", "2", "--init", str(first),
                               "--start-index", "500", "--workers", "1"])
    a = pretrain_nano.read_safetensors(first / "decoder.safetensors")
    b = pretrain_nano.read_safetensors(second / "decoder.safetensors")
    assert set(a) == set(b) and any(not np.allclose(a[k], b[k]) for k in a)  # trained on from there
    import json  # noqa: PLC0415
    state = json.loads((second / "state.json").read_text())
    assert state["step"] == 2 and state["next_index"] > 500  # its own corpus indices, from --start-index
