"""The procedural corpus: deterministic, consistent captions and attributes, a degraded slice, a held-out split."""
import numpy as np

from engine.score_codec import DISTORT, FIRST_EVENT, NOISE, parse_token
from training.corpus import BAD_CAPTIONS, GENRES, MOODS, generate_corpus, generate_piece, possible_captions, split_of

FRAMES = 160


def test_deterministic_from_seed_and_index():
    a, b = generate_piece(3, 17, FRAMES), generate_piece(3, 17, FRAMES)
    assert np.array_equal(a.codes, b.codes) and a.caption == b.caption and a.attributes == b.attributes
    assert not np.array_equal(a.codes, generate_piece(4, 17, FRAMES).codes)
    assert [p.caption for p in generate_corpus(3, 5, FRAMES, start=15)][2] == a.caption


def test_shapes_and_token_range():
    for i in range(30):
        p = generate_piece(0, i, FRAMES)
        assert p.codes.shape == (4, FRAMES) and p.codes.min() >= 0 and p.codes.max() < 512


def test_attributes_match_the_tokens():
    for i in range(60):
        p = generate_piece(0, i, FRAMES)
        a = p.attributes
        events = {k: [parse_token(k, t) for t in p.codes[k] if t >= FIRST_EVENT] for k in range(4)}
        if a["degraded"]:
            continue  # wrong notes may cross into a neighbouring instrument
        assert {e.instrument for e in events[0] if e} <= {a["lead"]}
        assert {e.instrument for e in events[1] if e} <= {a["bass"]}
        assert {e.instrument for e in events[2] if e} == {a["harmony"]}
        assert bool(events[3]) == (a["drums"] is not None)
        assert a["genre"] in GENRES and a["mood"] in MOODS


def test_captions_name_what_is_there():
    for i in range(200):
        p = generate_piece(0, i, FRAMES)
        a, cap = p.attributes, p.caption.lower()
        if a["degraded"]:
            assert p.caption in BAD_CAPTIONS
            continue
        named_genre = any(w in cap for w in GENRES[a["genre"]].words)
        named_inst = any(x in cap for x in (a["lead"], a["harmony"], a["bass"]))
        named_mood = any(w in cap for w in MOODS[a["mood"]]["words"])
        assert named_genre or named_inst or named_mood, cap
        if "bpm" in cap:
            assert f"{a['tempo_bpm']:g}" in cap


def test_degraded_slice_and_split():
    pieces = generate_corpus(0, 400, FRAMES)
    degraded = [p for p in pieces if p.attributes["degraded"]]
    assert 0.07 < len(degraded) / len(pieces) < 0.18
    assert any(((p.codes == NOISE) | (p.codes == DISTORT)).any() for p in degraded)
    assert not any(((p.codes == NOISE) | (p.codes == DISTORT)).any() for p in pieces if not p.attributes["degraded"])
    assert sum(split_of(i) == "heldout" for i in range(400)) == 20


def test_one_caption_many_pieces():
    """Short captions recur across pieces that differ: the diversity a prompt should have."""
    pieces = generate_corpus(0, 600, FRAMES)
    by_caption = {}
    for p in pieces:
        by_caption.setdefault(p.caption, []).append(p)
    common = max(by_caption.values(), key=len)
    assert len(common) >= 5
    assert len({p.codes.tobytes() for p in common}) == len(common)


def test_possible_captions_are_the_captions_true_of_a_piece():
    """Every drawn caption is among its attributes' possible captions; generic ones are shared across pieces
    that fit them, specific ones (tempo, key) are not."""
    pieces = [p for p in generate_corpus(0, 150, FRAMES) if not p.attributes["degraded"]]
    truths = [possible_captions(p.attributes) for p in pieces]
    assert all(p.caption in t for p, t in zip(pieces, truths))
    a, b = next((x, y) for x in pieces for y in pieces if x.attributes["genre"] == y.attributes["genre"] and
                x.attributes["tempo_bpm"] != y.attributes["tempo_bpm"])
    shared = possible_captions(a.attributes) & possible_captions(b.attributes)
    assert any(c.endswith(".") and len(c.split()) <= 3 for c in shared)  # e.g. "Rock." fits both
    assert not any("bpm" in c.lower() for c in shared)  # a tempo names one of them only


def test_noisy_captions_follow_the_stated_rates_and_leave_the_music_alone():
    from training import corpus  # noqa: PLC0415
    pieces = [corpus.generate_piece(0, i, 64) for i in range(1, 1200) if i % 20]
    clean = [p for p in pieces if not p.attributes["degraded"]]
    generic = np.mean([p.noisy_caption in corpus.GENERIC_CAPTIONS for p in clean])
    assert abs(generic - corpus.GENERIC_SHARE) < 0.04
    # a noisy caption names a wrong genre about WRONG_SHARE of the time when it names one
    named = [(p, g) for p in clean for g in corpus.GENRES
             if any(f" {w} " in f" {p.noisy_caption.lower().strip('.')} " for w in corpus.GENRES[g].words)]
    wrong = np.mean([g != p.attributes["genre"] for p, g in named])
    assert 0.15 < wrong < 0.35
    # the true caption and the music are those of a piece made without any noise (own random stream)
    p = corpus.generate_piece(0, 5, 64)
    assert p.caption in corpus.possible_captions(p.attributes)
    degraded = next(p for p in pieces if p.attributes["degraded"])
    assert degraded.noisy_caption == degraded.caption in corpus.BAD_CAPTIONS
