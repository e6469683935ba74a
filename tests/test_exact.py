"""Exact metrics of nano clips (engine.exact) on hand-built token grids with known answers."""
import numpy as np
import pytest

from engine import exact
from engine.score_codec import HOLD, NOISE, REST, chord_token, drum_token, note_token

C_MAJOR = (0, 2, 4, 5, 7, 9, 11)


def grid(frames=128, d=4, lead="guitar", melody=C_MAJOR, bass="electric bass", chords="guitar", kit="acoustic",
         shift=0):
    """A clip on a 16th grid of d frames: a melody on every 16th, bass and chords on every bar, drums on beats.
    `shift` moves every lead onset by that many frames (off the grid)."""
    codes = np.full((4, frames), HOLD, dtype=np.int64)
    codes[:, 0] = REST
    for step, f in enumerate(range(0, frames, d)):
        codes[0, min(f + shift, frames - 1)] = note_token("lead", lead, 60 + melody[step % len(melody)])
        if step % 16 == 0:
            codes[1, f] = note_token("bass", bass, 36)
            codes[2, f] = chord_token(chords, 0, "maj")
        if kit and step % 4 == 0:
            codes[3, f] = drum_token(kit, ["kick"])
    return codes


def test_a_clip_that_meets_every_request():
    caption = "A fast rock song in C major with guitar and electric bass, drums, 120 bpm"
    score = exact.score_clip(grid(), caption)
    assert set(score.met) == {"instrument guitar", "instrument electric bass", "drums", "tempo 120 BPM",
                              "key C major", "genre rock"}
    assert all(score.met.values()) and score.adherence == 1.0 and score.clean == 1.0
    assert score.quality == exact.OMEGA * 1.0 + 1.0 == 6.0


def test_adherence_is_the_share_of_checkable_requests_met():
    # slow (d = 8 is 60 BPM) and no drums, but the clip is at 120 BPM with drums and a guitar: 1 of 3 met
    score = exact.score_clip(grid(), "slow guitar with no drums")
    assert score.met == {"instrument guitar": True, "no drums": False, "slow": False}
    assert score.adherence == pytest.approx(1 / 3) and score.quality == pytest.approx(5 / 3 + 1)
    assert exact.score_clip(grid(kit=""), "slow guitar with no drums").met["no drums"]
    # 60 BPM without drums (no genre drums at 60 BPM: a kick every beat at d = 8 reads as a 120 BPM groove)
    assert exact.score_clip(grid(d=8, kit=""), "slow guitar with no drums").met["slow"]


def test_kits_keys_and_genres_are_exact():
    assert exact.score_clip(grid(kit="electronic"), "techno with a drum machine").met["kit electronic"]
    assert not exact.score_clip(grid(kit="acoustic"), "techno with a drum machine").met["kit electronic"]
    assert exact.score_clip(grid(), "in A minor").met == {"key A minor": True}  # A minor: the notes of C major
    assert exact.score_clip(grid(), "in D major").met == {"key D major": False}
    assert not exact.score_clip(grid(lead="bells"), "Rock.").met["genre rock"]  # rock has no bells
    assert not exact.score_clip(grid(d=7), "Rock.").met["genre rock"]  # nor a 68.6 BPM tempo
    jazz = grid(d=5, lead="piano", bass="upright bass", chords="piano")  # jazz: 96 or 160 BPM
    assert exact.score_clip(jazz, "Jazz tune.").met["genre jazz"]


def test_what_cannot_be_checked_is_not_counted():
    score = exact.score_clip(grid(), "a melancholic, dreamy piece")
    assert score.met == {} and score.adherence is None and score.quality is None and score.clean == 1.0
    assert exact.unchecked("a melancholic, dreamy piece in minor") == ["melancholic", "dreamy", "minor"]
    assert exact.unchecked("calm jazz in C major") == ["calm"]  # the mode of a named key is checked


def test_clean_needs_no_noise_onsets_on_the_grid_and_one_key():
    assert exact.clean(exact.read(grid())) == 1.0
    noisy = grid()
    noisy[3, 50:53] = NOISE
    assert exact.clean_parts(exact.read(noisy)) == dict(parts=True, no_noise=False, on_grid=True, in_key=True)
    late = grid(shift=1)  # every lead onset a frame late: most onsets leave the grid
    assert not exact.clean_parts(exact.read(late))["on_grid"]
    wrong = grid(melody=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11))  # the chromatic scale: no diatonic key fits
    assert exact.clean_parts(exact.read(wrong)) == dict(parts=True, no_noise=True, on_grid=True, in_key=False)
    assert exact.clean(exact.read(noisy)) == exact.clean(exact.read(late)) == exact.clean(exact.read(wrong)) == 0.0


def test_tempo_is_read_from_the_grid():
    assert exact.read(grid(d=4)).tempo_bpm == 120 and exact.read(grid(d=5)).tempo_bpm == 96
    assert exact.score_clip(grid(d=5), "mid-tempo piano").met == {"instrument piano": False, "mid-tempo": True}


def test_event_diversity():
    a, b = grid(), grid(lead="piano")
    assert exact.event_diversity(np.stack([a, a, a])) == 0.0
    d = exact.event_distance(a, b)
    assert 0 < d < 1 and exact.event_diversity(np.stack([a, b])) == d
    assert exact.event_diversity(a[None]) == 0.0


def test_event_distances_match_the_pairwise_definition():
    rng = np.random.default_rng(0)
    clips = np.stack([grid(), grid(lead="piano"), grid(d=5), grid()])
    clips[3, 0, rng.integers(0, clips.shape[-1], 20)] = exact.HOLD  # some sustain changed, some events dropped
    d = exact.event_distances(clips)
    assert d.shape == (4, 4) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    for i in range(4):
        for j in range(4):
            assert d[i, j] == exact.event_distance(clips[i], clips[j])
    silent = np.full((2, 4, 8), exact.HOLD)
    assert np.all(exact.event_distances(silent) == 0)  # no events anywhere: no distance (not a division by zero)


def groove(genre: str, d: int, bars: int = 3, melody: bool = False) -> np.ndarray:
    """A clip playing `genre`'s own drum groove, bass style and chord rhythm at d frames per 16th (no melody unless
    asked: the lead then plays on every beat)."""
    from engine.nano_world import GENRES  # noqa: PLC0415 (only these tests build grooves)
    g = GENRES[genre]
    frames = 16 * d * bars
    codes = np.full((4, frames), HOLD, dtype=np.int64)
    codes[:, 0] = REST
    for step in range(16 * bars):
        f, pos = step * d, step % 16
        if pos in exact.BASS_STEPS[g.bass_style]:
            codes[1, f] = note_token("bass", g.bass[0], 36)
        if pos in exact.CHORD_STEPS[g.chord_rhythm]:
            codes[2, f] = chord_token(g.harmony[0], 0, "maj")
        hits = [voice for voice, pat in g.groove.items() if pat[pos] == "x"]
        if hits and g.kits:
            codes[3, f] = drum_token(g.kits[0], hits)
        if melody and pos % 4 == 0:
            codes[0, f] = note_token("lead", g.lead[0], 60 + C_MAJOR[step % 7])
    return codes


def test_a_160_bpm_groove_without_odd_sixteenths_is_not_read_at_half_speed():
    rock = exact.read(groove("rock", d=3))  # rock's groove has onsets on even 16ths only: it fits the 80 BPM grid too
    assert rock.sixteenth == 3 and rock.tempo_bpm == 160
    assert exact.score_clip(groove("rock", d=3), "rock at 160 bpm").met == {"tempo 160 BPM": True, "genre rock": True}
    hiphop = exact.read(groove("hip hop", d=6))  # and a true 80 BPM groove stays at 80
    assert hiphop.sixteenth == 6 and hiphop.tempo_bpm == 80
    assert exact.read(groove("techno", d=4)).tempo_bpm == 120


def test_a_clip_missing_a_part_is_not_clean():
    silent_lead = grid()
    silent_lead[0] = HOLD  # no melody note at all
    silent_lead[0, 0] = REST
    r = exact.read(silent_lead)
    assert r.playing == dict(lead=False, bass=True, harmony=True, drums=True)
    assert exact.clean(r) == 0.0 and not exact.clean_parts(r)["parts"]
    assert exact.score_clip(silent_lead, "Rock song.").clean == 0.0
    no_drums = grid(kit="")
    assert exact.clean(exact.read(no_drums), "Rock song.") == 0.0  # rock always has drums
    assert exact.clean(exact.read(no_drums), "ambient piece") == 1.0  # ambient never has
    assert exact.clean(exact.read(no_drums), "rock with no drums") == 1.0  # asked for none
    assert exact.parts_needed("folk song") == ("lead", "bass", "harmony")  # folk sometimes has no kit
    assert exact.parts_needed("piano with drums") == ("lead", "bass", "harmony", "drums")


def test_a_key_or_tempo_the_clip_cannot_show_is_undecided_not_failed():
    two_notes = grid()
    two_notes[0, 9:] = HOLD  # melody notes at frames 0, 4 and 8 -> keep two of them
    two_notes[0, 8] = HOLD
    score = exact.score_clip(two_notes, "guitar in D major")
    assert score.undecided == ("key D major",) and score.met == {"instrument guitar": True}
    assert score.adherence == 1.0
    sparse = np.full((4, 128), HOLD, dtype=np.int64)
    sparse[:, 0] = REST
    sparse[1, 0], sparse[2, 0] = note_token("bass", "sub bass", 36), chord_token("pad", 0, "maj")
    assert exact.score_clip(sparse, "slow ambient").undecided == ("slow",)


def test_one_melody_note_in_a_rock_clip_is_not_a_melody():
    sparse = groove("rock", d=3, melody=False)  # 144 frames at 160 BPM: rock's density asks for a real tune
    sparse[0, 48] = note_token("lead", "guitar", 64)
    r = exact.read(sparse)
    assert r.playing["lead"] and exact.melody_floor(r, "Rock song.") > 1
    assert not exact.clean_parts(r, "Rock song.")["parts"]
    tune = groove("rock", d=3, melody=True)  # a note on every beat
    assert exact.clean_parts(exact.read(tune), "Rock song.")["parts"]
    # ambient's sparse melodies: one note is its part in a short clip
    assert exact.melody_floor(exact.read(grid(d=8, kit="")), "ambient piece") == 1
