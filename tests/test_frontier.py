"""Pareto fronts, dominated areas and the bootstrap on synthetic points with known answers."""
import numpy as np
import pytest

from engine.figures import _tick_label, nice_ticks
from training.frontier import area_difference, bootstrap, dominated_area, overlap, pareto_front, spearman


def test_pareto_front_drops_dominated_points():
    pts = [(0.1, 1.0), (0.2, 0.9), (0.15, 0.8), (0.3, 0.5), (0.3, 0.4), (0.05, 0.95)]
    assert pareto_front(pts) == [(0.1, 1.0), (0.2, 0.9), (0.3, 0.5)]


def test_dominated_area_of_a_staircase():
    # front: quality 1 up to diversity 0.1, 0.9 up to 0.2, 0.5 up to 0.3; reference quality 0
    pts = [(0.1, 1.0), (0.2, 0.9), (0.3, 0.5)]
    assert dominated_area(pts, 0.0, 0.3, 0.0) == pytest.approx(0.1 * 1.0 + 0.1 * 0.9 + 0.1 * 0.5)
    assert dominated_area(pts, 0.15, 0.25, 0.5) == pytest.approx(0.05 * 0.4 + 0.05 * 0.0)
    assert dominated_area(pts, 0.3, 0.4, 0.0) == 0.0  # beyond the front nothing is dominated
    assert dominated_area(pts, 0.2, 0.1, 0.0) == 0.0


def test_area_difference_sign_and_overlap():
    better = [(0.1, 1.0), (0.2, 1.0), (0.3, 1.0)]
    worse = [(0.0, 0.5), (0.25, 0.5)]
    assert overlap(better, worse) == (0.1, 0.25)
    d = area_difference(better, worse)
    assert d["difference"] == pytest.approx(0.15 * (1.0 - 0.5)) and d["area_b"] == 0
    assert area_difference(worse, better)["difference"] == pytest.approx(-d["difference"])


def test_bootstrap_interval_covers_the_mean():
    data = np.random.default_rng(0).normal(1.0, 1.0, 200)
    lo, hi = bootstrap(lambda idx: data[idx].mean(), len(data), reps=300)
    assert lo < data.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert np.isnan(spearman([1, 2, 3], [1, 1, 1]))


def test_ticks_are_round_and_cover_the_range():
    ticks = nice_ticks(-0.00354, 0.369)
    assert ticks == [0.0, 0.1, 0.2, 0.3] and [_tick_label(t, 0.1) for t in ticks] == ["0.0", "0.1", "0.2", "0.3"]
    assert nice_ticks(2.1, 4.6) == [2.5, 3.0, 3.5, 4.0, 4.5]
    assert _tick_label(0.25, 0.25) == "0.25"
