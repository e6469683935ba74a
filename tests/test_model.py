"""Loading a MusicGen checkpoint folder saved by transformers, and a service from sources."""
import pytest
import torch
from conftest import perturbed_state

from engine.checkpoint import CheckpointError, save_state
from engine.merge import Blend
from engine.model import load_model
from engine.service import MusicService, Request


@pytest.fixture(scope="module")
def saved_composite(tmp_path_factory, composite):
    comp, tokenizer, _ = composite
    folder = tmp_path_factory.mktemp("musicgen-tiny")
    comp.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_loads_the_same_model(saved_composite, model):
    loaded = load_model(saved_composite)
    assert torch.equal(loaded.decoder.flat, model.decoder.flat)
    cond = loaded.encode_text(["rock"])
    torch.testing.assert_close(cond.hidden, model.encode_text(["rock"]).hidden)
    assert loaded.sample_rate == 8000 and loaded.frame_rate == 50


def test_unknown_sources_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="not in the local cache"):
        load_model("someone/not-cached-musicgen")
    with pytest.raises(ValueError, match="cannot load MusicGen checkpoint"):
        load_model(tmp_path)  # an empty folder


def test_service_from_sources(tmp_path, saved_composite, model):
    save_state(perturbed_state(model, 1), tmp_path / "q" / "decoder.safetensors")
    save_state(perturbed_state(model, 2), tmp_path / "d.safetensors")
    service, notices = MusicService.from_sources(str(saved_composite), str(tmp_path / "q"),
                                                 str(tmp_path / "d.safetensors"))
    assert not notices and service.checkpoints == ["base", "d", "q"]
    gen = service.generate_merged(Request("x", num_clips=1, duration_s=0.2, seed=0), 1.0)
    assert gen.model == "1·d"
    only_base, notices = MusicService.from_sources(str(saved_composite))
    assert len(notices) == 2 and only_base.mixer.endpoints["q"] is only_base.base.flat
    with pytest.raises(CheckpointError, match="missing.safetensors: no such"):
        MusicService.from_sources(str(saved_composite), str(tmp_path / "missing.safetensors"))


def test_service_in_bf16_keeps_endpoints_exact(tmp_path, saved_composite, model):
    """bf16 serving weights: checkpoints are cast to bf16 once; λ = 0 and 1 give them back bit for bit."""
    q, d = perturbed_state(model, 1), perturbed_state(model, 2)
    save_state(q, tmp_path / "q.safetensors")
    save_state(d, tmp_path / "d.safetensors")
    service, _ = MusicService.from_sources(str(saved_composite), str(tmp_path / "q.safetensors"),
                                           str(tmp_path / "d.safetensors"), dtype="bf16")
    assert service.serving.dtype == torch.bfloat16 and service.base.flat.dtype == torch.bfloat16
    for lam, ref in ((1.0, d), (0.0, q)):
        with service.gate.use(Blend.lerp("q", "d", lam)):
            state = dict(service.serving.model.named_parameters())
            assert all(torch.equal(state[n], ref[n].to(torch.bfloat16)) for n in ref)
    gen = service.generate_merged(Request("x", num_clips=2, duration_s=0.2, seed=0), 0.5)
    again = service.generate_merged(Request("x", num_clips=2, duration_s=0.2, seed=0), 0.5)
    assert torch.equal(gen.codes, again.codes)
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        MusicService.from_sources(str(saved_composite), dtype="fp8")
