"""nano_metrics's helpers on corpus pieces whose attributes are known, and the plot helper."""
import numpy as np
from PIL import Image

from engine import exact
from engine.score_codec import DISTORT, HOLD, NOISE
from training.corpus import generate_piece
from training.nano_metrics import edit_distance, parser_accuracy
from training.plot import plot, read_columns


def test_reading_corpus_pieces_gives_their_attributes():
    for i in range(1, 40):
        p = generate_piece(0, i, 256)
        a, r = p.attributes, exact.read(p.codes)
        if a["degraded"]:
            assert (r.noise_events > 0) == bool(((p.codes == NOISE) | (p.codes == DISTORT)).any())
            continue
        assert r.noise_events == 0 and exact.clean(r) == 1.0
        assert r.harmony == {a["harmony"]} and r.lead <= {a["lead"]} and r.bass <= {a["bass"]}
        assert r.drums == (a["drums"] is not None)
        if a["drums"]:
            assert r.kits == {a["drums"]}


def test_parser_accuracy_on_true_pieces_beats_other_captions():
    clean = [generate_piece(0, i, 256) for i in range(0, 2000, 20)]
    degraded = [p for p in clean if p.attributes["degraded"]]
    clean = [p for p in clean if not p.attributes["degraded"]]
    acc = parser_accuracy(clean, degraded)
    for kind in ("instrument", "genre"):
        assert acc["own_caption"][kind]["share"] > 0.85 > acc["other_caption"][kind]["share"]
    # the clean flag holds on true clean pieces but those whose melody is too sparse to count (ambient, short clips)
    assert acc["clean_flag"]["clean"] >= 0.97 and acc["clean_flag"]["degraded"] < 0.2


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
    assert exact.event_distance(a, b) == 1.0 and edit_distance(a, b) == 1 / 400
    assert exact.event_distance(a, a) == 0.0
