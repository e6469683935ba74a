"""Hardening, second round (issue 26, part): a trust anchor for weights, start-up checks before any model loads,
bounded inputs, safe exports and the temporary folders of dead servers."""
import csv
import io
import math
import os
import time
from pathlib import Path

import pytest
import torch

from app import parse_args
from engine.checkpoint import CheckpointError, data_digest, save_state, sign
from engine.ratings import RatingStore
from engine.studio import make_studio, pages, sweep_dead_owners
from engine.studio.files import OUTPUTS_PREFIX, SERVED_PREFIX
from engine.studio.web import ClientAddress
from engine.trust import HMAC_KEY, KEY_ENV, MANIFEST, keyed_digest, read_manifest

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_checkpoint_is_in_the_manifest_with_its_digest():
    manifest = read_manifest(ROOT / MANIFEST)
    shipped = sorted((ROOT / "weights").rglob("*.safetensors"))
    assert shipped and {str(f.relative_to(ROOT)) for f in shipped} == set(manifest)
    assert all(manifest[str(f.relative_to(ROOT))] == data_digest(f) for f in shipped)


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """θ_d with the rows of its first LM head rolled, re-signed with the project's own `sign`: its checksum holds."""
    from safetensors.torch import load_file  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("tampered")
    state = load_file(str(ROOT / "weights/theta_d/decoder.safetensors"))
    name = next(k for k in state if "lm_heads.0" in k)
    state[name] = torch.roll(state[name], 1, dims=0)
    save_state(state, folder / "decoder.safetensors")
    sign(folder / "decoder.safetensors")
    return folder


def flags(tmp_path, *extra):
    return parse_args(["--base", "weights/nano", "--ratings-db", str(tmp_path / "r.sqlite"), *extra])


def test_a_re_signed_tampered_theta_is_refused_naming_the_file(tampered, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"{tampered}/decoder.safetensors: not in the weights manifest"):
        make_studio(flags(tmp_path, "--theta-d", str(tampered)))
    assert time.perf_counter() - t < 5  # refused before any model loads
    studio = make_studio(flags(tmp_path, "--theta-d", str(tampered), "--allow-unverified-weights"))
    assert any("Not verified" in line and str(tampered) in line for line in studio.banner)


def test_an_hmac_with_the_servers_key_or_an_operators_manifest_makes_a_theta_trusted(tampered, tmp_path, monkeypatch):
    signed = tmp_path / "signed.safetensors"
    signed.write_bytes((tampered / "decoder.safetensors").read_bytes())
    sign(signed, {HMAC_KEY: keyed_digest(data_digest(signed), "server secret")})
    monkeypatch.setenv(KEY_ENV, "server secret")
    assert not any("Not verified" in line for line in make_studio(flags(tmp_path, "--theta-d", str(signed))).banner)
    monkeypatch.setenv(KEY_ENV, "another key")
    with pytest.raises(CheckpointError, match="not in the weights manifest"):
        make_studio(flags(tmp_path, "--theta-d", str(signed)))
    manifest = tmp_path / "mine.json"
    manifest.write_text('{"files": {"signed.safetensors": "%s"}}' % data_digest(signed))
    make_studio(flags(tmp_path, "--theta-d", str(signed), "--manifest", str(manifest)))


def test_a_fifo_checkpoint_and_a_corrupt_ratings_db_are_refused_at_once(tmp_path):
    fifo = tmp_path / "theta.safetensors"
    os.mkfifo(fifo)
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"{fifo}: not a regular file"):
        make_studio(flags(tmp_path, "--theta-d", str(fifo)))
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    with pytest.raises(ValueError, match=f"{bad}: not a usable ratings database"):
        make_studio(parse_args(["--base", "weights/nano", "--ratings-db", str(bad)]))
    assert time.perf_counter() - t < 5


def test_exports_neutralise_formulas_behind_invisible_characters_and_quote_every_cell(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    for prompt in ("rock;=1+1", "\u200b=cmd", "\ufeff+1", " -2", "calm piano"):
        store.add(prompt, 1, "a", "b", "A", "B", "s")
    text = store.export_csv()
    prompts = [row["prompt"] for row in csv.DictReader(io.StringIO(text))]
    assert prompts == ["rock;=1+1", "'\u200b=cmd", "'\ufeff+1", "' -2", "calm piano"]
    assert '"rock;=1+1"' in text  # quoted: a ';'-separated reader keeps it in one cell


def test_the_prompt_helpers_refuse_huge_text_at_once():
    t = time.perf_counter()
    assert "too long" in pages.heard_markdown("x" * 1_000_000)
    assert pages.nano_wording("rock " * 200_000)[0].startswith("rock rock")
    assert time.perf_counter() - t < 0.05


def test_the_folders_of_dead_servers_are_swept_and_live_ones_kept(tmp_path):
    dead = [tmp_path / f"{OUTPUTS_PREFIX}999999999-abc", tmp_path / f"{SERVED_PREFIX}999999999-def"]
    live = [tmp_path / f"{OUTPUTS_PREFIX}{os.getpid()}-ghi", tmp_path / f"{OUTPUTS_PREFIX}other"]
    for folder in dead + live:
        folder.mkdir()
        (folder / "clip.wav").write_bytes(b"x")
    assert sorted(sweep_dead_owners(tmp_path)) == sorted(dead)
    assert all(f.exists() for f in live) and not any(f.exists() for f in dead)


def test_huge_integers_and_unused_fields_are_refused_readably(tmp_path):
    studio = make_studio(flags(tmp_path))  # the shipped nano: the soup is there
    for field, value in (("num_clips", 10**400), ("seed", 10**400), ("duration", 10**400)):
        args = dict(prompt="rock", num_clips=1, duration=0.5, seed=1, temperature=1.0, mode="q-d", lam=0.5,
                    compare=False, guidance=3.0, negative="") | {field: value}
        with pytest.raises(ValueError, match="too large"):
            studio.generate(**args)
    with pytest.raises(ValueError, match="λ must be finite"):  # the soup ignores λ, but NaN is still no λ
        studio.blend("soup", math.nan)
    with pytest.raises(ValueError, match="γ must be a number"):  # no comparison asked, the CFG fields still checked
        studio.generate("rock", 1, 0.5, 1, 1.0, "q-d", 0.5, False, ["3"], "")


def test_exports_are_pruned_with_the_outputs(tmp_path):
    from engine.model import build_debug_model  # noqa: PLC0415
    from engine.service import MusicService  # noqa: PLC0415
    from engine.studio import Studio  # noqa: PLC0415

    studio = Studio(MusicService(build_debug_model(seed=0)), ratings=RatingStore(tmp_path / "r.sqlite"),
                    out_dir=tmp_path / "out", keep_outputs=3)
    paths = [studio.export_ratings() for _ in range(10)]
    assert all(p.endswith("ratings.csv") for p in paths) and Path(paths[-1]).exists()
    assert len(list((tmp_path / "out").rglob("*.csv"))) <= 4  # the newest 3 folders and the one being written


def test_a_client_address_behind_proxies_is_the_one_the_nearest_proxy_saw_never_what_the_client_wrote():
    spoofed = {"x-forwarded-for": "6.6.6.6, 203.0.113.7"}  # the client wrote 6.6.6.6; the Space's proxy appended
    assert ClientAddress(1).of(spoofed, "10.1.1.1") == "203.0.113.7"
    assert ClientAddress(2).of(spoofed, "10.1.1.1") == "6.6.6.6"  # two proxies of one's own: the left one is theirs
    assert ClientAddress(0).of(spoofed, "10.1.1.1") == "10.1.1.1"  # no proxy: the peer, whatever the header says
    assert ClientAddress(2).of({"x-forwarded-for": "203.0.113.7"}, "10.1.1.1") == "10.1.1.1"  # fewer hops: the peer
    scope = {"headers": [(b"X-Forwarded-For", b"1.2.3.4")], "client": ("10.1.1.1", 5555)}
    assert ClientAddress(1).of_scope(scope) == "1.2.3.4" and ClientAddress().of_scope(scope) == "10.1.1.1"


@pytest.mark.parametrize(("flag", "value"), [("--client-share", "-1"), ("--votes-per-minute", "0"),
                                             ("--proxy-hops", "-2"), ("--concurrency", "0")])
def test_serving_limits_below_their_least_are_refused_with_the_flag_named(flag, value, capsys):
    with pytest.raises(SystemExit):
        parse_args([flag, value])
    assert f"{flag} must be at least" in capsys.readouterr().err


def test_on_a_space_the_address_is_read_through_its_proxy(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/cfg-distill")
    assert parse_args([]).proxy_hops == 1
    monkeypatch.delenv("SPACE_ID")
    assert parse_args([]).proxy_hops == 0 and parse_args([]).client_share == 4
