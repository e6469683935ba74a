"""Attribute parsers behind the nano metrics, on corpus pieces whose attributes are known, and the plot helper."""
import numpy as np
from PIL import Image

from engine.score_codec import HOLD, NOISE
from training.corpus import generate_piece
from training.nano_metrics import claims, describe, edit_distance, event_distance
from training.plot import plot, read_columns


def test_describe_reads_instruments_drums_tempo():
    for i in range(1, 40):
        p = generate_piece(0, i, 256)
        a, d = p.attributes, describe(p.codes)
        if a["degraded"]:
            assert d["degraded"] or not ((p.codes == NOISE).any())
            continue
        assert not d["degraded"]
        assert d["instruments"] >= {a["harmony"]}
        assert d["drums"] == (a["drums"] is not None)
        if a["drums"]:
            assert d["kits"] == {a["drums"]}


def test_claims_parse_captions():
    d = dict(instruments={"piano", "pad"}, kits={"electronic"}, drums=True, tempo=120.0, mode="minor", degraded=False)
    c = claims("fast techno at 120 BPM in G minor with drum machine and piano")
    assert set(c) == {"drum kit", "tempo", "mode", "instrument"} and all(f(d) for f in c.values())
    c = claims("slow ambient instrumental with no drums, 60 bpm")
    assert set(c) == {"no drums", "tempo"} and not any(f(d) for f in c.values())
    assert claims("Rock song.") == {}


def test_edit_distance():
    a = np.zeros((4, 10), dtype=int)
    b = a.copy()
    b[0, :5] = 1
    assert edit_distance(a, a) == 0 and edit_distance(a, b) == 5 / 40


def test_plot_writes_a_png(tmp_path):
    (tmp_path / "log.csv").write_text("step,loss,heldout\n1,3.0,\n2,2.0,2.5\n3,1.5,\n")
    series = read_columns(tmp_path / "log.csv", "step", ["loss", "heldout"])
    assert series["heldout"] == [(2.0, 2.5)] and len(series["loss"]) == 3
    out = plot(series, tmp_path / "curve.png", log_y=True)
    assert Image.open(out).size == (800, 450)


def test_event_distance_ignores_shared_sustain():
    a = np.full((4, 100), HOLD)
    b = a.copy()
    a[0, 0], b[0, 0] = 10, 11  # one differing onset among 400 positions
    assert event_distance(a, b) == 1.0 and edit_distance(a, b) == 1 / 400
    assert event_distance(a, a) == 0.0
