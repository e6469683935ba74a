"""Blind A/B rating store: votes map to systems, persistence across reopen, win rates and intervals, bad input."""
import csv
import io
import threading

import pytest

from engine.ratings import PairResult, RatingStore, default_path


def test_votes_count_for_systems_not_letters(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    store.add("rock", 1, "CFG", "merged", quality="A", diversity="B")  # CFG better quality, merged more diverse
    store.add("rock", 2, "merged", "CFG", quality="B", diversity="A")  # same verdicts with the order swapped
    store.add("jazz", 3, "CFG", "merged", quality="tie", diversity="B")
    res = {(r.system, r.opponent, r.aspect): r for r in store.results()}
    q = res[("CFG", "merged", "quality")]
    assert (q.wins, q.losses, q.ties) == (2, 0, 1) and q.win_rate == pytest.approx(2.5 / 3)
    d = res[("merged", "CFG", "diversity")]
    assert (d.wins, d.losses, d.ties) == (3, 0, 0) and d.win_rate == 1
    assert res[("merged", "CFG", "quality")].win_rate == pytest.approx(0.5 / 3)  # the mirror row


def test_ratings_survive_reopening_and_export(tmp_path):
    path = tmp_path / "sub" / "r.sqlite"
    RatingStore(path).add("calm piano", None, "a", "b", "A", "tie", session="s1")
    again = RatingStore(path)
    assert len(again.rows()) == 1
    rows = list(csv.DictReader(io.StringIO(again.export_csv())))
    assert rows[0]["prompt"] == "calm piano" and rows[0]["quality"] == "A"
    assert rows[0]["rater"] == again.rater("s1") != "s1" and "session" not in rows[0]  # stable across reopening
    assert rows[0]["created_utc"].endswith("+00:00")
    assert again.table()[0][:6] == ["a", "b", "diversity", 0, 0, 1]


def test_export_has_no_live_formula_and_no_session_id(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    attacks = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    for i, text in enumerate(attacks):
        store.add(text, i, "=a", "b", "A", "B", session=f"secret-session-{i}")
    text = store.export_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    for row, attack in zip(rows, attacks, strict=True):
        assert row["prompt"] == "'" + attack and row["system_a"] == "'=a"
        assert all(not v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values())
    assert "secret-session" not in text and len({r["rater"] for r in rows}) == len(attacks)
    other = RatingStore(tmp_path / "other.sqlite")
    assert other.rater("secret-session-0") != store.rater("secret-session-0")  # salted per database


def test_confidence_intervals():
    even = PairResult("a", "b", "quality", 50, 50, 0)
    lo, hi = even.ci95
    # the interval's width: 2 · 1.96 · √(sample variance of the scores / n)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.25 * 100 / 99 / 100) ** 0.5)
    sure = PairResult("a", "b", "quality", 3, 0, 0)
    lo, hi = sure.ci95
    assert hi == 1 and 0.3 < lo < 0.6  # Wilson: 3 of 3 is not certainty
    assert PairResult("a", "b", "quality", 0, 0, 4).ci95[0] < 0.5 < PairResult("a", "b", "quality", 0, 0, 4).ci95[1]


def test_bad_votes_are_refused(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="quality vote must be one of"):
        store.add("p", 1, "a", "b", "C", "A")
    with pytest.raises(ValueError, match="two different systems"):
        store.add("p", 1, "a", "a", "A", "A")
    with pytest.raises(ValueError, match="limited to 500"):
        store.add("p" * 501, 1, "a", "b", "A", "A")
    assert store.rows() == []


def test_corrupt_database_is_named(tmp_path):
    bad = tmp_path / "r.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="r.sqlite: not a usable ratings database"):
        RatingStore(bad)


def test_concurrent_writers(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    threads = [threading.Thread(target=lambda: [store.add("p", i, "a", "b", "A", "B") for i in range(20)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.rows()) == 80


def test_default_path_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MUSIC_RATINGS_DB", str(tmp_path / "x.sqlite"))
    assert default_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("MUSIC_RATINGS_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "cfg-distill" / "ratings.sqlite"
