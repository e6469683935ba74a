"""The score codec: token helpers round-trip, rendering is deterministic, bounded, finite and fast enough."""
import pytest
import torch

from engine.score_codec import (
    CHORD_INSTRUMENTS,
    DISTORT,
    DRUM_KITS,
    FRAME_RATE,
    HOLD,
    HOP,
    LEAD_INSTRUMENTS,
    NOISE,
    QUALITY_NAMES,
    REST,
    VOCAB,
    ScoreCodec,
    chord_token,
    drum_token,
    note_token,
    parse_token,
)


@pytest.fixture(scope="module")
def codec():
    return ScoreCodec()


def test_token_helpers_roundtrip():
    for inst in LEAD_INSTRUMENTS:
        for pitch in (48, 60, 95):
            ev = parse_token("lead", note_token("lead", inst, pitch))
            assert ev.instrument == inst and ev.pitches == (pitch,)
    ev = parse_token("bass", note_token("bass", "sub bass", 30))
    assert ev.instrument == "sub bass" and ev.pitches == (30,)
    for inst in CHORD_INSTRUMENTS:
        for root in (0, 7, 11):
            for q in QUALITY_NAMES:
                ev = parse_token("harmony", chord_token(inst, root, q))
                assert (ev.instrument, ev.chord) == (inst, (root, q)) and len(ev.pitches) >= 3
    ev = parse_token("drums", drum_token("lofi", ["snare", "kick"]))
    assert ev.instrument == "lofi" and set(ev.voices) == {"kick", "snare"}
    assert drum_token("acoustic", []) == REST
    assert all(parse_token(s, t) is None for s in range(4) for t in (REST, HOLD, NOISE, DISTORT, VOCAB - 1))
    with pytest.raises(ValueError, match="outside"):
        note_token("lead", "piano", 20)


def _random_codes(seed, B=2, T=64):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, VOCAB, (B, 4, T), generator=g)
    holds = torch.rand(B, 4, T, generator=g) < 0.6  # mostly sustained, like music
    return torch.where(holds, HOLD, codes)


def test_decode_shape_determinism_bounds(codec):
    codes = _random_codes(0)
    a, b = codec.decode(codes), codec.decode(codes)
    assert a.shape == (2, 64 * HOP) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert a.abs().max() < 0.95 + 1e-6  # the soft limiter never clips
    assert a[0].std() > 0.01  # something sounds
    assert not torch.equal(a[0], a[1])


def test_silence_and_edges(codec):
    silent = torch.full((1, 4, 32), REST)
    assert codec.decode(silent).abs().max() == 0
    one_note = silent.clone()
    one_note[0, 0, 0] = note_token("lead", "organ", 60)
    one_note[0, 0, 1:] = HOLD
    x = codec.decode(one_note)[0]
    assert abs(x[0]) < 0.01 and abs(x[-1]) < 0.01  # attack and end fade: no clicks at the edges


def test_degradation_tokens_change_the_audio(codec):
    clean = torch.full((1, 4, 64), HOLD)
    clean[0, :, 0] = torch.tensor([note_token("lead", "piano", 60), note_token("bass", "electric bass", 36),
                                   chord_token("pad", 0, "maj"), drum_token("acoustic", ["kick"])])
    noisy, distorted = clean.clone(), clean.clone()
    noisy[0, 0, 20:24] = NOISE
    distorted[0, 0, 20:40] = DISTORT
    ref = codec.decode(clean)
    assert not torch.equal(codec.decode(noisy), ref) and not torch.equal(codec.decode(distorted), ref)
    band = slice(20 * HOP, 24 * HOP)
    assert codec.decode(noisy)[0, band].std() > ref[0, band].std()


def test_bad_shapes_are_refused(codec):
    with pytest.raises(ValueError, match="codes must be"):
        codec.decode(torch.zeros(2, 3, 10, dtype=torch.long))


def test_kits_and_rates():
    assert len(DRUM_KITS) == 3 and FRAME_RATE * HOP == ScoreCodec().sample_rate
