"""The app's callbacks without a browser (`Studio`), and the Blocks it builds."""
import io
import os
import threading
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

import engine.decoder
import engine.kernels
from app import build_ui, parse_args
from engine.cfg import PAPER_CFG, CfgSetting
from engine.decoder import cpu_has_bf16, cpu_row_block
from engine.embedding import AudioEmbedder
from engine.generate import GenerationCancelled
from engine.kernels import first_cpu
from engine.model import build_debug_model
from engine.ratings import RatingStore
from engine.score_codec import ScoreCodec
from engine.scorers import QualityConfig, QualityScorer, Scorers, SentenceEncoder
from engine.service import MusicService
from engine.studio import MAX_SESSIONS, Janitor, Studio, Takes, ab_systems, make_studio, pages, prune
from engine.studio.core import Allowance
from engine.studio.startup import bf16_tip, kernel_tip

SOUP = "soup"


def keys(modes):
    return [m.key for m in modes]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_tower):
    tiny = tiny_tower(window_s=1.0)
    torch.manual_seed(0)
    model = build_debug_model(seed=0)
    model.codec = ScoreCodec()  # audible differences between codes (the random EnCodec renders one sound)
    service = MusicService(model)
    service.mixer.add("q", service.base.flat)
    gen = torch.Generator().manual_seed(1)
    service.add_checkpoint("d", {k: v + 0.02 * torch.randn(v.shape, generator=gen)
                                 for k, v in service.base.model.state_dict().items() if v.is_floating_point()})
    scorers = Scorers(AudioEmbedder(tiny).eval(), QualityScorer(QualityConfig(audio=tiny)).eval(), SentenceEncoder())
    root = tmp_path_factory.mktemp("studio")
    return Studio(service, scorers, RatingStore(root / "ratings.sqlite"), out_dir=root / "out")


def run(studio, **overrides):
    kwargs = dict(prompt="rock song", num_clips=3, duration=0.5, seed=7, temperature=1.0, mode="θ_q ↔ θ_d", lam=0.5,
                  compare=False, guidance=3.0, negative="Bad audio quality.")
    kwargs.update(overrides)
    return studio.generate(**kwargs)


def test_generate_clips_scores_and_wavs(studio):
    r = run(studio)
    assert r.merged.audio.shape[0] == 3 and r.base is None and r.merged.seed == 7
    s = r.scores["merged"]
    assert s.diversity.shape == (3, 3) and s.quality.shape == (3,)
    archive, *wavs = r.files  # one ZIP of all takes (FLAC) first, then each WAV
    assert len(wavs) == 3 and all("rock-song_0.5s_seed7_q-d-lam0.50_clip" in f and f.startswith(str(studio.out_dir))
                                  for f in wavs)  # prompt, length, seed, mode and λ: two sets never share a name
    assert archive.endswith("rock-song_0.5s_seed7_q-d-lam0.50_all.zip")
    audio, sr = sf.read(wavs[0])
    assert sr == r.merged.sample_rate and len(audio) == r.merged.audio.shape[-1]
    with sf.SoundFile(wavs[0]) as f:  # no CFG settings on a clip made without CFG; nano's tempo and key
        assert "seed=7" in f.comment and f.title == "rock song" and "guidance" not in f.comment
        assert "tempo=" in f.comment and "key=" in f.comment
    with zipfile.ZipFile(archive) as z:  # the same samples, losslessly, with the same title and comment
        names = sorted(z.namelist())
        assert names == sorted(os.path.basename(f)[:-4] + ".flac" for f in wavs)
        with sf.SoundFile(io.BytesIO(z.read(os.path.basename(wavs[0])[:-4] + ".flac"))) as f:
            assert f.format == "FLAC" and f.comment.startswith("prompt=") and f.title == "rock song"
            assert np.array_equal(f.read(dtype="int16"), sf.read(wavs[0], dtype="int16")[0])
    assert "Seed 7" in pages.summary_markdown(r) and "mean diversity" in pages.scores_markdown(r)
    heat, none = pages.heatmaps(r)
    assert heat.size[0] > 100 and none is None
    assert pages.qd_figure(studio.fronts, r) is not None


def test_same_settings_same_clips_and_lambda_matters(studio):
    a, b = run(studio), run(studio)
    assert np.array_equal(a.merged.audio, b.merged.audio)
    c = run(studio, lam=1.0)
    assert not np.array_equal(a.merged.codes, c.merged.codes)


def test_seed_as_text_blank_or_number(studio):
    assert run(studio, seed=" 12 ").merged.seed == 12 == run(studio, seed=12.0).merged.seed
    a, b = run(studio, seed=""), run(studio, seed=None)
    assert a.merged.seed != b.merged.seed  # blank: a fresh random seed each time (1 in 2^31 to collide)


def test_compare_with_cfg_uses_the_same_seed(studio):
    r = run(studio, compare=True, seed=None)
    assert r.base is not None and r.base.seed == r.merged.seed and r.base.request.guidance == 3.0
    assert len(r.files) == 7 and any("_cfg3_clip" in f for f in r.files)  # a ZIP and 3 + 3 WAVs
    assert r.files[0].endswith("_q-d-lam0.50+cfg3_all.zip")  # the ZIP names both sets
    assert "CFG costs" in pages.summary_markdown(r) and set(r.scores) == {"merged", "base"}


@pytest.mark.parametrize("overrides, message", [
    (dict(lam=1.5), "λ must be a number in \\[0, 1\\]"),
    (dict(lam=float("nan")), "λ must be finite"),
    (dict(num_clips=9), "num_clips must be between 1 and 8"),
    (dict(duration=1000), "duration_s must be at most"),
    (dict(mode="nonsense"), "unknown mode"),
    (dict(guidance=0.5, compare=True), "guidance γ must be ≥ 1"),
    (dict(prompt="x" * 501), "limit is 500"),
    (dict(seed="abc"), "seed must be a whole number or blank"),
    (dict(seed=1.5), "seed must be a whole number or blank"),
    (dict(seed=-1), "seed must be between 0 and"),
])
def test_bad_input_is_a_readable_error(studio, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(studio, **overrides)


def test_merge_reports_time_and_soup_needs_three(studio):
    assert "λ = 0.25" in studio.merge("θ_q ↔ θ_d", 0.25)
    assert "already merged" in studio.merge("θ_q ↔ θ_d", 0.25)
    assert "merged in" in studio.merge("θ_q ↔ θ_d", 0.3)
    assert SOUP not in keys(studio.modes) and "uniform soup" not in studio.systems()


def test_stop_interrupts_a_generation(studio):
    seen = []

    def progress(fraction, desc=None):
        if not seen:
            seen.append(fraction)
            studio.stop("session-1")

    with pytest.raises(GenerationCancelled, match="while sampling"):
        run(studio, duration=2.0, progress=progress, session="session-1")
    assert run(studio, session="session-1").merged.audio.shape[0] == 3  # the next request runs normally


def test_stop_reaches_a_request_that_was_still_queued_and_only_it(studio):
    submitted = time.monotonic()  # queued, then the session presses Stop before it starts
    studio.stop("session-2")
    with pytest.raises(GenerationCancelled, match="before it started"):
        run(studio, session="session-2", submitted=submitted)
    assert run(studio, session="session-2").merged.audio.shape[0] == 3  # sent after the Stop: runs
    assert run(studio, session="other", submitted=submitted).merged.audio.shape[0] == 3  # other sessions: untouched


def test_stop_after_sampling_writes_no_files(studio, monkeypatch):
    before = set(studio.out_dir.rglob("*.wav"))
    monkeypatch.setattr(studio, "_score", lambda result: studio.stop("session-3"))
    with pytest.raises(GenerationCancelled, match="after scoring"):
        run(studio, session="session-3")
    assert set(studio.out_dir.rglob("*.wav")) == before


def test_stop_times_are_kept_for_a_bounded_number_of_sessions(studio):
    for i in range(MAX_SESSIONS + 10):
        studio.stop(f"many-{i}")
    assert len(studio._stops) == MAX_SESSIONS and "many-0" not in studio._stops


def test_blind_pair_rating_and_results(studio, tmp_path):
    token, a, b = studio.new_pair("calm piano", "merged λ=0", "base + CFG γ=3", num_clips=2, duration=0.5, seed=3)
    assert a.audio.shape[0] == b.audio.shape[0] == 2 and a.seed == b.seed == 3
    pair_models = {a.model, b.model}
    assert "base" in pair_models
    files = studio.write_pair(token, a, b)
    assert [f.rsplit("/", 1)[1] for f in files] == ["A1.wav", "A2.wav", "B1.wav", "B2.wav"]  # names reveal nothing
    message = studio.rate(token, "A", "tie", session="s")
    assert "A was" in message
    with pytest.raises(ValueError, match="already rated"):
        studio.rate(token, "A", "tie")
    rows = studio.ratings.rows()
    assert rows[-1]["prompt"] == "calm piano" and {rows[-1]["system_a"], rows[-1]["system_b"]} == {"merged λ=0",
                                                                                                "base + CFG γ=3"}
    assert any(r[2] == "quality" for r in studio.results_table())
    assert "calm piano" in open(studio.export_ratings()).read()
    with pytest.raises(ValueError, match="two different systems"):
        studio.new_pair("x", "base", "base")
    with pytest.raises(ValueError, match="choose A, B or tie"):
        studio.rate("whatever", "maybe", "A")


def test_concurrent_users_get_their_own_lambda(studio):
    alone = {lam: run(studio, lam=lam, seed=11).merged.codes for lam in (0.0, 1.0)}
    out, errors = {}, []

    def user(lam):
        try:
            for _ in range(3):
                out.setdefault(lam, []).append(run(studio, lam=lam, seed=11).merged.codes)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=user, args=(lam,)) for lam in (0.0, 1.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(c, alone[lam]) for lam, codes in out.items() for c in codes)


def test_ui_builds_with_named_endpoints(studio):
    demo = build_ui(studio)
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"generate", "merge", "stop", "new_pair", "rate", "results", "export_ratings"} <= names


def test_flags_and_environment(monkeypatch):
    monkeypatch.setenv("MUSIC_MAX_DURATION", "4")
    monkeypatch.setenv("MUSIC_BASE", "debug")
    args = parse_args([])
    assert args.max_duration == 4 and args.base == "debug"
    assert parse_args([]).max_duration == 4 and parse_args(["--max-duration", "20"]).max_duration == 20
    assert parse_args(["--base", "x", "--soup", "a", "b"]).soup == ["a", "b"]


def test_old_output_folders_are_pruned_oldest_first(tmp_path):
    for age, name in ((300, "pair-x"), (200, "20260101-000000-aaaaaa"), (100, "pair-y")):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260101-000000-aaaaaa", "pair-y"]
    prune(tmp_path, keep=1, spare=tmp_path / "20260101-000000-aaaaaa")  # the folder being written stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260101-000000-aaaaaa", "pair-y"]


def test_output_folders_are_also_bounded_in_bytes_newest_kept(tmp_path):
    """Stereo 32 kHz takes of up to 30 s: the folder count alone let 64 folders reach gigabytes."""
    for age, name in ((300, "old"), (200, "mid"), (100, "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "take.wav").write_bytes(b"x" * 1000)
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))
    (tmp_path / "writing").mkdir()
    (tmp_path / "writing" / "take.wav").write_bytes(b"x" * 1000)
    prune(tmp_path, keep=10, spare=tmp_path / "writing", max_bytes=2500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "writing"]


def test_pruning_survives_folders_that_vanish_meanwhile(tmp_path, monkeypatch):
    """Another request may delete a folder between this one's listing and its stat (issue 18, A)."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    real_stat, calls = type(tmp_path).stat, []

    def stat(path, *args, **kwargs):
        if path.name == "b":
            calls.append(path)
            if len(calls) > 1:  # listed as a folder, gone by the time its age is read
                raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "stat", stat)
    prune(tmp_path, keep=1)  # no error


def test_shipped_nano_brings_its_thetas_and_scorers(tmp_path):
    """Naming the shipped nano folder explicitly (as a Space would) loads the shipped θ_q, θ_d, E and scorers."""

    studio = make_studio(parse_args(["--base", "weights/nano", "--ratings-db", str(tmp_path / "r.sqlite")]))
    assert studio.scorers.has_diversity and studio.scorers.has_quality
    assert not any("No θ_" in line for line in studio.banner)
    assert not torch.equal(studio.service.mixer.endpoints["q"], studio.service.mixer.endpoints["d"])
    assert SOUP in keys(studio.modes)  # the shipped β = 15 model makes the uniform soup of three
    bare = make_studio(parse_args(["--base", "weights/nano", "--soup", "--ratings-db", str(tmp_path / "s.sqlite")]))
    assert SOUP not in keys(bare.modes)


def test_bf16_tip_only_for_a_real_musicgen_in_fp32_where_bf16_pays(monkeypatch, tmp_path):
    monkeypatch.setattr(engine.decoder, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(engine.kernels, "has_few_row_linear", lambda: False)
    assert "--dtype bf16" in bf16_tip("facebook/musicgen-small", "cpu", "fp32")
    for args in (("facebook/musicgen-small", "cpu", "bf16"), ("facebook/musicgen-small", "cuda", "fp32"),
                 ("debug", "cpu", "fp32"), ("weights/nano", "cpu", "fp32")):
        assert bf16_tip(*args) is None, args
    monkeypatch.setattr(engine.decoder, "cpu_has_bf16", lambda: False)
    assert bf16_tip("facebook/musicgen-small", "cpu", "fp32") is None
    monkeypatch.setattr(engine.kernels, "has_few_row_linear", lambda: True)  # the C kernel reads int8 and bf16
    assert "--dtype int8" in bf16_tip("facebook/musicgen-small", "cpu", "fp32")


def test_kernel_tip_only_where_the_c_kernel_could_not_be_built(monkeypatch):
    monkeypatch.setattr(engine.kernels, "_tried", True)
    monkeypatch.setattr(engine.kernels, "_lib", None)
    monkeypatch.setattr(engine.kernels, "_status", "no C compiler found (set CC)")
    monkeypatch.delenv("MUSIC_CPU_KERNELS", raising=False)
    assert "no C compiler" in kernel_tip("cpu") and kernel_tip("cuda") is None
    monkeypatch.setenv("MUSIC_CPU_KERNELS", "0")  # turned off on purpose: no nagging
    assert kernel_tip("cpu") is None
    monkeypatch.delenv("MUSIC_CPU_KERNELS")
    monkeypatch.setattr(engine.kernels, "_lib", object())
    assert kernel_tip("cpu") is None


def test_cpu_flags_are_read():
    info = first_cpu()
    assert cpu_has_bf16() == (" avx512_bf16" in info or " amx_bf16" in info)
    assert cpu_row_block("cpu") == (4 if "AuthenticAMD" in info else 0) and cpu_row_block("meta") == 0


def test_nano_clips_get_exact_scores_and_the_plot_uses_the_exact_axes(studio):
    r = run(studio, prompt="fast rock with guitar and drums", compare=True, guidance=2.0, plausibility=0.1)
    e = r.exact["merged"]
    assert set(e.requests) == {"instrument guitar", "drums", "fast", "genre rock"} and len(e.quality) == 3
    assert all(0 <= q <= 6 for q in e.quality) and 0 <= e.diversity <= 1
    assert r.base_label == "base + CFG γ=2 α=0.1" and r.base.request.plausibility == 0.1
    assert "exact quality" in pages.scores_markdown(r) and "checked in the notes" in pages.scores_markdown(r)
    fronts_exact = {"CFG": [(0.5, 3.0), (0.4, 4.0)]}
    assert pages.qd_figure({}, r, fronts_exact) is not None
    mood_only = run(studio, prompt="a dreamy piece")
    assert mood_only.exact["merged"].mean_quality is None and "dreamy" in pages.scores_markdown(mood_only)


def test_teacher_file_sets_the_cfg_default_and_the_ab_systems(tmp_path):
    path = tmp_path / "teacher.json"
    path.write_text('{"guidance": 2.5, "negative_prompt": "", "plausibility": 0.1}')
    teacher = CfgSetting.load(path)
    assert teacher == CfgSetting(2.5, "", 0.1) and teacher.label == "base + CFG γ=2.5 α=0.1 unconditional"
    assert CfgSetting.load(tmp_path / "missing.json") == PAPER_CFG
    labels = [s.label for s in ab_systems(["q", "d"], teacher)]
    assert labels.index(teacher.label) < labels.index("base + CFG γ=3")
    path.write_text('{"guidance": 3, "negative_prompt": "Bad audio quality.", "plausibility": 0, "top_p": 0.9}')
    nucleus = CfgSetting.load(path)
    assert nucleus.top_p == 0.9 and nucleus.label == "base + CFG γ=3 top-p=0.9"
    assert next(s for s in ab_systems(["q", "d"], nucleus) if s.label == nucleus.label).cfg.top_p == 0.9
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a teacher file"):
        CfgSetting.load(tmp_path / "bad.json")


def test_the_janitor_deletes_served_files_once_old_and_keeps_the_pages_own(tmp_path):
    own = tmp_path / "page" / "plot.webp"  # made while the UI was built
    own.parent.mkdir()
    own.write_bytes(b"x")
    janitor = Janitor(tmp_path, lifetime=60, started=time.time() + 1)
    time.sleep(1.1)
    old, new = tmp_path / "a1" / "clip.wav", tmp_path / "b2" / "clip.wav"
    for f in (old, new):
        f.parent.mkdir()
        f.write_bytes(b"x")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert janitor.sweep() == 1
    assert not old.exists() and not old.parent.exists() and new.exists() and own.exists()
    assert janitor.sweep(now=time.time() + 61) == 1 and not new.exists() and own.exists()


def test_the_plot_compares_like_with_like(studio, monkeypatch):
    r = run(studio, compare=True)  # 3 takes of 0.5 s
    fronts = {"CFG": [(0.5, 3.0), (0.4, 4.0)]}
    drawn = []
    monkeypatch.setattr(pages, "quality_diversity_plot", lambda shown, points, **kw: drawn.append((shown, points, kw)))
    pages.qd_figure(fronts, r, {}, dict(prompts=32, clips=4, seconds=4.0))  # measured otherwise: fronts hidden
    shown, points, kw = drawn[-1]
    assert shown == {} and len(points) == 2 and "fronts hidden" in kw["note"]  # this prompt: trained vs CFG
    pages.qd_figure(fronts, r, {}, dict(prompts=32, clips=3, seconds=0.5))
    assert drawn[-1][0] == fronts and "32 test prompts" in drawn[-1][2]["note"]


def test_the_generate_button_reports_problems_in_place_and_keeps_the_takes(studio, monkeypatch):
    demo = build_ui(studio)
    button = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "generate_ui")
    args = ("x" * 600, 2, 0.5, "", False, 1.0, "θ_q ↔ θ_d", 0.5, False, 3.0, "", 0.0, 0.0, None)
    [out] = list(button(*args))  # only the message changes: every other output is left as it was
    assert len(out) == 1 and "the limit is 500" in next(iter(out.values()))

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(studio, "generate", broken)
    [out] = list(button("rock", *args[1:]))
    assert len(out) == 1 and "Something went wrong (RuntimeError)" in next(iter(out.values()))
    assert "previous takes are kept" in next(iter(out.values()))


def test_the_generate_button_streams_the_first_take_then_shows_every_take(studio, monkeypatch):
    monkeypatch.setattr(studio, "streams", True)
    demo = build_ui(studio)
    button = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "generate_ui")
    live = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "live")
    updates = list(button("rock", 2, 2.0, "5", True, 1.0, "θ_q ↔ θ_d", 0.5, False, 3.0, "", 0.0, 0.0, None))
    *chunks, final = updates
    assert len(chunks) >= 3 and all(set(u) == {live} and u[live][:4] == b"RIFF" for u in chunks)  # WAV chunks
    assert live not in final and len(final) > 10  # then the takes, scores and files, the stream left as it played
    heard = sum(sf.info(io.BytesIO(u[live])).frames for u in chunks[1:])  # after the lead-in: take 1, and ticks
    made = run(studio, prompt="rock", num_clips=2, duration=2.0, seed=5)
    assert made.merged.audio.shape[-1] <= heard <= made.merged.audio.shape[-1] + 8 * len(chunks)
    # a refusal while streaming is still a message in place
    [out] = list(button("x" * 600, 2, 2.0, "5", True, 1.0, "θ_q ↔ θ_d", 0.5, False, 3.0, "", 0.0, 0.0, None))
    assert "the limit is 500" in next(iter(out.values()))  # and nothing was streamed: the last stream stays


def test_exact_scores_check_what_nano_heard_as_the_played_table_does(studio):
    r = run(studio, prompt="workout playlist, high energy, 130 bpm")  # nano hears: 120 BPM fast energetic techno
    e, played = r.exact["merged"], r.played["merged"][0]
    assert "genre techno" in e.requests and set(e.requests) == set(played["met"]) | set(played["undecided"])
    assert e.unchecked == ["energetic"] and played["checked_as"] == "120 BPM fast energetic techno, drums"


def test_a_double_submit_gets_the_same_reveal_and_stores_once(studio):
    token, a, b = studio.new_pair("calm piano", "merged λ=0", "merged λ=1", num_clips=1, duration=0.5, seed=4)
    before = len(studio.ratings.rows())
    first = studio.rate(token, "A", "B", session="me")
    assert studio.rate(token, "A", "B", session="me") == first  # the second click of a double click
    assert len(studio.ratings.rows()) == before + 1
    with pytest.raises(ValueError, match="already rated"):  # another session never learns the reveal
        studio.rate(token, "A", "B", session="someone else")


def test_a_vote_that_could_not_be_stored_can_be_sent_again(studio, monkeypatch):
    token, _, _ = studio.new_pair("calm piano", "merged λ=0", "base", num_clips=1, duration=0.5, seed=4)
    real_add = studio.ratings.add

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(studio.ratings, "add", disk_full)
    with pytest.raises(OSError):
        studio.rate(token, "tie", "A", session="me")
    monkeypatch.setattr(studio.ratings, "add", real_add)
    assert "A was" in studio.rate(token, "tie", "A", session="me")


def test_votes_are_limited_per_client_address_and_a_refused_vote_keeps_its_pair(studio, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(studio, "_votes", Allowance(2, clock=lambda: clock[0]))
    tokens = [studio.new_pair("calm piano", "merged λ=0", "base", num_clips=1, duration=0.5, seed=i)[0]
              for i in range(4)]
    for i, token in enumerate(tokens[:2]):  # two identities, one address
        studio.rate(token, "A", "B", session=f"rater {i}", client="10.0.0.1")
    with pytest.raises(ValueError, match=r"too many votes .* \(at most 2\).*stays open, vote again in 60 s"):
        studio.rate(tokens[2], "A", "B", session="rater 3", client="10.0.0.1")
    assert "A was" in studio.rate(tokens[3], "tie", "tie", session="rater 4", client="10.0.0.2")  # another address
    clock[0] += 60.0  # a minute later the same address votes again, on the pair it was refused
    assert "A was" in studio.rate(tokens[2], "A", "B", session="rater 3", client="10.0.0.1")


def test_an_allowance_is_a_sliding_window_and_forgets_votes_not_stored():
    clock = [0.0]
    allow = Allowance(2, clock=lambda: clock[0])
    assert allow.take("a") == 0 and allow.take("a") == 0 and allow.take("a") == 60.0
    allow.give_back("a")
    clock[0] = 30.0
    assert allow.take("a") == 0 and allow.take("a") == 30.0  # the first vote leaves the window at 60 s
    clock[0] = 60.0
    assert allow.take("a") == 0
    with pytest.raises(ValueError):
        Allowance(1.5)


def _fn(demo, name):
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)


def test_a_new_pair_clears_every_vote_as_gradio_applies_it(studio):
    """Gradio pops the value out of each update it applies: one update shared by both votes cleared only the first,
    so the second vote of the previous pair was stored with the next one. Each vote gets its own update now."""
    from gradio.blocks import postprocess_update_dict  # noqa: PLC0415

    demo = build_ui(studio)
    out = _fn(demo, "open_votes")("calm piano", "merged λ=0", "merged λ=1", 1, 0.5)
    votes = [block for block in out if getattr(block, "elem_id", "") in ("vote-quality", "vote-diversity")]
    assert len(votes) == 2
    applied = {block.elem_id: postprocess_update_dict(block, out[block]) for block in votes}
    assert all("value" in u and u["value"] is None for u in applied.values()), applied  # both cleared


def test_a_refused_lambda_is_said_in_place_and_the_last_good_one_restored(studio):
    demo = build_ui(studio)
    merge_ui = _fn(demo, "merge_ui")
    out = merge_ui("q-d", 1.5, 0.35)
    (info, message), (slider, restored) = [(k, v) for k, v in out.items() if not isinstance(v, dict)] + \
        [(k, v) for k, v in out.items() if isinstance(v, dict)]
    assert "λ must be a number in [0, 1]" in message and "stays at 0.35" in message and restored["value"] == 0.35
    good = merge_ui("θ_q ↔ θ_d", 0.25, 0.35)  # the old API value still names the mode
    assert any(v == 0.25 for v in good.values()) and any("λ = 0.25" in str(v) for v in good.values())


def test_the_results_table_is_read_at_every_page_load(studio):
    demo = build_ui(studio)
    table = next(b for b in demo.blocks.values() if getattr(b, "elem_id", "") == "results")
    assert table.load_event_to_attach is not None  # a function value: called when a page loads


def test_a_take_is_continued_or_given_new_endings_beside_its_cfg_take(studio):
    r = run(studio, duration=1.0, compare=True, seed=21)
    takes = Takes.of(r)
    longer = studio.vary(takes, 2, None, 2.0, 2, 5, 1.0, "q-d", 0.5)  # continue take 2 to 2 s, two ways
    n = r.merged.codes.shape[-1]
    assert longer.merged.codes.shape[-1] == 2 * n and torch.equal(longer.merged.codes[:, :, :n],
                                                                  r.merged.codes[1:2].expand(2, -1, -1))
    assert torch.equal(longer.base.codes[:, :, :n], r.base.codes[1:2].expand(2, -1, -1))  # CFG take 2, with CFG
    assert longer.base.request.cfg == r.base.request.cfg and "take 2 continued" in longer.label
    endings = studio.vary(takes, 1, "0.5", 1.0, 3, 6, 1.0, "q-d", 0.5)  # keep 0.5 s of take 1, three new endings
    half = n // 2
    assert torch.equal(endings.merged.codes[:, :, :half], r.merged.codes[:1, :, :half].expand(3, -1, -1))
    assert "new endings from 0.5 s" in endings.label and "-take1-from0.5s_clip1.wav" in endings.files[1]
    for bad, message in ((dict(take=4), "take must be between 1 and 3"), (dict(from_s="2"), "'from' must be a time"),
                         (dict(seconds=0.5, from_s=None), "longer than the 1 s"), (dict(from_s="abc"), "seconds")):
        args = dict(takes=takes, take=1, from_s="0.5", seconds=2.0, num_clips=1, seed=1, temperature=1.0, mode="q-d",
                    lam=0.5) | bad
        with pytest.raises(ValueError, match=message):
            studio.vary(**args)
    with pytest.raises(ValueError, match="make some takes first"):
        studio.vary(None, 1, None, 2.0, 1, 1, 1.0, "q-d", 0.5)
