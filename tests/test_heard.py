"""What nano hears in a prompt and what a clip played (`engine.heard`), and the everyday-prompt check."""
from pathlib import Path

from test_exact import grid

from engine.heard import hear, key_of, played, world_markdown
from training import heard_check


def test_nano_own_caption_is_heard_without_changes():
    h = hear("A fast, happy rock song in C major featuring guitar.")
    assert (h.genre, h.mood, h.tempo, h.key) == ("rock", "happy", "fast", "C major")
    assert h.instruments == ["guitar"] and h.changed == [] and h.nothing_for == []
    assert h.drums is True and "drums (rock always has them)" in h.implied


def test_an_unsupported_tempo_is_moved_to_the_nearest_and_said_so():
    h = hear("workout playlist, high energy, 130 bpm with vocals")
    assert h.bpm == 120 and h.tempo == "fast" and h.genre == "techno" and h.mood == "energetic"
    assert "130 bpm → 120 BPM (nano's nearest tempo)" in h.changes() and h.nothing_for == ["vocals"]


def test_one_everyday_word_can_set_several_things():
    h = hear("a lullaby")
    assert (h.mood, h.tempo, h.drums) == ("calm", "slow", False) and h.instruments == ["bells"]
    assert h.changes() == ["lullaby → mood calm, bells, no drums, tempo slow"]


def test_longer_phrases_win_and_consume_their_words():
    assert hear("spooky music for a haunted house").genre is None  # not house music
    assert hear("slap bass groove").instruments == ["electric bass"]
    assert hear("house music").genre == "techno"


def test_the_rewritten_prompt_says_the_same_in_nano_words():
    for prompt in ("chill lo-fi beats to study to", "epic orchestral trailer music", "a lullaby",
                   "minimal techno at 125 bpm"):
        h = hear(prompt)
        again = hear(h.rewritten())
        assert (again.genre, again.mood, again.tempo, again.drums, again.kit) == (h.genre, h.mood, h.tempo, h.drums,
                                                                                 h.kit), prompt
        assert again.changed == [] and set(h.instruments) <= set(again.instruments)


def test_a_prompt_nano_cannot_read_says_so():
    h = hear("something nice")
    assert h.rewritten() == "" and (h.genre, h.mood, h.tempo, h.drums) == (None, None, None, None)


def test_what_a_clip_played():
    p = played(grid(d=5), "fast rock with piano, no drums")
    assert p["instruments"] == ["electric bass", "guitar"] and p["drums"] == ["drums"] and p["tempo"] == "96 BPM"
    assert p["key"] == "C major" and p["problems"] == []
    assert p["met"] == {"instrument piano": False, "no drums": False, "fast": False, "genre rock": False}
    assert p["parts"] == ["melody", "bass", "chords", "drums"]
    late = played(grid(shift=1), "")
    assert late["problems"] == ["off the beat"] and late["met"] == {}
    # checked against what nano heard: 130 bpm is nano's 120 BPM, which the clip (d = 4) plays
    heard_tempo = played(grid(d=4), "upbeat piano at 130 bpm")
    assert heard_tempo["met"]["tempo 120 BPM"] and "120 BPM" in heard_tempo["checked_as"]
    silent = grid()
    silent[0] = 1  # HOLD (token 1) everywhere in the lead: no melody
    assert "no melody" in played(silent, "Rock song.")["problems"]
    assert key_of((0, 2)) is None  # too few notes to tell


def test_the_everyday_check_counts_fields_and_lists_misses():
    cases = [dict(prompt="a lullaby", mood="calm", drums=False, tempo="slow", instruments=["bells"]),
             dict(prompt="a lullaby", genre="jazz")]
    text = heard_check.report(cases)
    assert text.startswith("4 of 5 expected fields right (80 %); 1 of 2 prompts with every field right (50 %).")
    assert "genre expected 'jazz', heard None" in text


def test_the_readme_lists_the_world_nano_knows():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert world_markdown() in readme  # regenerate the README's list from engine.heard.world_markdown if this fails
