"""Ready for the Hub: model cards with metadata, weights from Hub repos (offline, through the cache's own layout),
publishing (dry run and a stand-in API), ratings on Spaces' persistent storage, one rater per browser, ZeroGPU."""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from app import parse_args
from engine import hub, ratings
from engine.checkpoint import CheckpointError
from engine.studio import make_studio, rater_id, rater_session
from engine.studio.startup import zerogpu_notice
from training import cards, export

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot(cache: Path, repo: str, files: list[Path], commit: str = COMMIT) -> Path:
    """Lay `files` out as huggingface_hub's cache does after a download of `repo`: blobs named by hash, a snapshot
    folder of links to them, refs/main naming the commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in files:
        blob = folder / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob.name)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants  # noqa: PLC0415

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    return cache


def flags(tmp_path, *extra):
    return parse_args(["--base", "weights/nano", "--ratings-db", str(tmp_path / "r.sqlite"), *extra])


# ---------------------------------------------------------------------- cards
def test_every_shipped_card_parses_with_its_licence_and_lineage():
    from huggingface_hub import ModelCard  # noqa: PLC0415

    folders = cards.shipped_folders(ROOT / "weights")
    assert {f.name for f in folders} == set(cards.REPO_NAMES)
    for folder in folders:
        data = ModelCard.load(folder / "README.md").data
        assert data.license == "mit" and data.pipeline_tag and "music" in data.tags, folder
        assert data.base_model or "trained-from-scratch" in data.tags, folder
    lineage = {f.name: ModelCard.load(f / "README.md").data.base_model for f in folders}
    assert lineage["theta_q"] == "cfg-distill/musicgen-nano" and lineage["theta_d"].endswith("/musicgen-nano-theta-q")
    assert lineage["quality"].endswith("/nano-diversity-embedding") and lineage["nano"] is None
    assert cards.stale(folders) == []  # the metadata is what training.cards makes of the folder, not hand-written


def test_a_theta_from_musicgen_inherits_its_licence_and_names_it(tmp_path):
    theta = tmp_path / "theta"
    theta.mkdir()
    (theta / "config.json").write_text(json.dumps({"beta": 0.0, "base": "facebook/musicgen-small", "init": None}))
    data = cards.card_data(theta)
    assert data.license == "cc-by-nc-4.0" and data.base_model == "facebook/musicgen-small"
    (theta / "README.md").write_text("# my θ\n\nText kept.\n")
    cards.write(theta)
    assert cards.stale([theta]) == [] and "Text kept." in (theta / "README.md").read_text()
    with pytest.raises(ValueError, match="not a model folder"):
        cards.card_data(tmp_path)


def test_export_writes_the_config_and_card_and_a_push_goes_to_the_named_repo(tmp_path, capsys):
    run, dest = tmp_path / "run", tmp_path / "theta_d"
    run.mkdir()
    shutil.copyfile(ROOT / "weights/theta_d/decoder.safetensors", run / "decoder.safetensors")
    shutil.copyfile(ROOT / "weights/theta_d/config.json", run / "config.json")
    export.main(["distill", str(run), str(dest), "--push-to-hub", "alice/theta-d", "--dry-run"])
    out = capsys.readouterr().out
    assert "would upload to https://huggingface.co/alice/theta-d: README.md, config.json, decoder.safetensors" in out
    assert "base_model: alice/musicgen-nano-theta-q" in out  # the dry run names the base in the pusher's namespace

    class StandIn:  # huggingface_hub.HfApi's two calls, recorded
        calls = []

        def create_repo(self, repo_id, **kw):
            self.calls.append(("create", repo_id, kw))

        def upload_folder(self, **kw):
            self.calls.append(("upload", kw["repo_id"], kw))

    files = export.publish(dest, "alice/theta-d", api=StandIn())
    assert [c[:2] for c in StandIn.calls] == [("create", "alice/theta-d"), ("upload", "alice/theta-d")]
    assert StandIn.calls[1][2]["folder_path"] == str(dest) and "decoder.safetensors" in files
    assert cards.card_data(dest, "alice").base_model == "alice/musicgen-nano-theta-q"
    assert cards.stale([dest], "alice") == []  # the pushed card names the base in the pusher's namespace
    with pytest.raises(ValueError, match="owner/name"):
        export.publish(dest, "no-owner")


# ---------------------------------------------------------------------- weights from Hub repos
def test_a_theta_named_by_repo_id_loads_from_the_hub_cache_as_the_local_folder_does(tmp_path, hub_cache):
    snapshot = hub_snapshot(hub_cache, "alice/theta-q", [ROOT / "weights/theta_q/decoder.safetensors",
                                                        ROOT / "weights/theta_q/config.json"])
    assert hub.resolve("alice/theta-q", allow_download=False) == str(snapshot)
    assert hub.resolve(f"alice/theta-q@{COMMIT}", allow_download=False) == str(snapshot)
    from_hub = make_studio(flags(tmp_path, "--theta-q", "alice/theta-q"))
    local = make_studio(flags(tmp_path, "--theta-q", "weights/theta_q"))
    assert torch.equal(from_hub.service.mixer.endpoints["q"], local.service.mixer.endpoints["q"])
    assert str(snapshot) in from_hub.models  # the page names where θ_q came from
    assert not any("Not verified" in line for line in from_hub.banner)  # its data is the shipped θ_q: trusted


def test_a_hub_theta_is_trust_checked_and_a_missing_repo_is_named(tmp_path, hub_cache):
    from safetensors.torch import load_file  # noqa: PLC0415

    from engine.checkpoint import save_state  # noqa: PLC0415

    state = load_file(str(ROOT / "weights/theta_d/decoder.safetensors"))
    state[next(iter(state))] = state[next(iter(state))] * 1.01
    changed = tmp_path / "decoder.safetensors"
    save_state(state, changed)
    hub_snapshot(hub_cache, "mallory/theta-d", [changed])
    with pytest.raises(CheckpointError, match="mallory--theta-d/snapshots/.*decoder.safetensors: not in the weights"):
        make_studio(flags(tmp_path, "--theta-d", "mallory/theta-d"))
    with pytest.raises(CheckpointError, match="nobody/nothing: not in the local Hugging Face cache and downloads are "
                                              "off .pass --allow-download"):
        make_studio(flags(tmp_path, "--embedding", "nobody/nothing"))


def test_a_nano_base_named_by_repo_id_is_its_snapshot_and_a_musicgen_id_stays_for_transformers(hub_cache):
    files = [ROOT / "weights/nano" / n for n in ("nano.json", "decoder.safetensors", "text_projection.safetensors")]
    snapshot = hub_snapshot(hub_cache, "alice/musicgen-nano", files)
    assert hub.resolve_base("alice/musicgen-nano", allow_download=False) == str(snapshot)
    assert hub.resolve_base("facebook/musicgen-small", allow_download=False) == "facebook/musicgen-small"
    assert hub.resolve("weights/theta_q", allow_download=False) == "weights/theta_q"  # a local path wins
    assert not hub.is_repo_id("debug") and not hub.is_repo_id("a/b/c") and hub.is_repo_id("a/b@v1.0")


# ---------------------------------------------------------------------- ratings on a Space, raters per browser
def test_ratings_default_to_spaces_persistent_storage_when_it_is_there(tmp_path, monkeypatch):
    monkeypatch.delenv("MUSIC_RATINGS_DB", raising=False)
    monkeypatch.setattr(ratings, "PERSISTENT_STORAGE", tmp_path / "data")
    assert not str(ratings.default_path()).startswith(str(tmp_path))  # no /data: the user's data folder
    (tmp_path / "data").mkdir()
    assert ratings.default_path() == tmp_path / "data" / "cfg-distill" / "ratings.sqlite"
    monkeypatch.setenv("MUSIC_RATINGS_DB", str(tmp_path / "mine.sqlite"))
    assert ratings.default_path() == tmp_path / "mine.sqlite"  # the operator's choice wins


def test_a_browser_keeps_one_rater_identity_and_a_forged_one_is_replaced(tmp_path):
    first = rater_id("")
    assert rater_id(first) == first and rater_id(None) != first and len(first) >= 16
    assert rater_id("<script>") != "<script>" and rater_id(["x"]) != ["x"]
    assert rater_session(first, "session") == f"browser:{first}" and rater_session("", "session") == "session"
    store = ratings.RatingStore(tmp_path / "r.sqlite")
    again = ratings.RatingStore(tmp_path / "r.sqlite")
    assert store.browser_secret() == again.browser_secret()  # identities stay readable across restarts
    assert ratings.RatingStore(tmp_path / "s.sqlite").browser_secret() != store.browser_secret()


# ---------------------------------------------------------------------- ZeroGPU
def test_on_zerogpu_the_app_says_why_it_runs_on_the_cpu(tmp_path, monkeypatch):
    """A stand-in `spaces` package (as ZeroGPU hardware provides): detected, not used, and the reason stated."""
    stand_in = tmp_path / "spaces"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("def GPU(fn=None, **kw):\n    raise AssertionError('not to be used')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    assert zerogpu_notice() is None  # not a ZeroGPU Space
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    notice = zerogpu_notice()
    assert "ZeroGPU" in notice and "forked" in notice and "README" in notice
    studio = make_studio(flags(tmp_path))
    assert studio.service.serving.device.type == "cpu" and any("ZeroGPU" in line for line in studio.banner)
