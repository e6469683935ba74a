"""Checkpoint loading: clear errors naming the file and the tensor; never unpickling."""
import pickle

import pytest
import torch
from conftest import perturbed_state
from safetensors.torch import save_file

from engine.checkpoint import CheckpointError, load_state, save_state
from engine.merge import WeightMixer


@pytest.fixture
def reference(model):
    return dict(model.decoder.model.named_parameters())


def test_roundtrip_file_and_folder(tmp_path, model, reference):
    state = perturbed_state(model, 3)
    save_state(state, tmp_path / "theta_q" / "decoder.safetensors")
    for path in (tmp_path / "theta_q" / "decoder.safetensors", tmp_path / "theta_q"):
        loaded = load_state(path, reference)
        assert all(torch.equal(loaded[n], state[n]) for n in state)
    assert not list((tmp_path / "theta_q").glob("*.tmp"))


def test_composite_layout_with_decoder_prefix(tmp_path, model, reference):
    state = perturbed_state(model, 4)
    save_file({"decoder." + n: t.contiguous() for n, t in state.items()} | {"text_encoder.x": torch.zeros(2)},
              str(tmp_path / "model.safetensors"))
    loaded = load_state(tmp_path, reference)
    assert torch.equal(loaded["lm_heads.1.weight"], state["lm_heads.1.weight"])


def test_missing_file_and_empty_folder(tmp_path, reference):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such"):
        load_state(tmp_path / "nope.safetensors", reference)
    with pytest.raises(CheckpointError, match="folder has none of decoder.safetensors"):
        load_state(tmp_path, reference)


def test_pickles_are_never_opened(tmp_path, reference):
    path = tmp_path / "theta.bin"
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match="theta.bin: only .safetensors"):
        load_state(path, reference)


def test_corrupt_file(tmp_path, reference):
    path = tmp_path / "decoder.safetensors"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="decoder.safetensors: not a readable safetensors file"):
        load_state(path, reference)


def test_missing_tensor_named(tmp_path, model, reference):
    state = perturbed_state(model, 5)
    del state["model.decoder.layers.1.fc2.weight"]
    save_state(state, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match=r"d.safetensors: missing 1 decoder tensor.*layers.1.fc2.weight"):
        load_state(tmp_path / "d.safetensors", reference)


def test_shape_mismatch_named(tmp_path, model, reference):
    state = perturbed_state(model, 5)
    state["lm_heads.2.weight"] = torch.zeros(3, 3)
    save_state(state, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match=r"'lm_heads.2.weight' has shape \(3, 3\), the model expects \(64, 64\)"):
        load_state(tmp_path / "d.safetensors", reference)


def test_unexpected_tensor_named(tmp_path, model, reference):
    save_state(perturbed_state(model, 5) | {"extra.bias": torch.zeros(1)}, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor.*'extra.bias'"):
        load_state(tmp_path / "d.safetensors", reference)


def test_nan_weights_refused(tmp_path, model, reference):
    state = perturbed_state(model, 5)
    state["model.decoder.layer_norm.weight"][0] = float("nan")
    save_state(state, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="'model.decoder.layer_norm.weight' contains NaN"):
        load_state(tmp_path / "d.safetensors", reference)


def test_mixer_loads_from_path(tmp_path, service):
    state = perturbed_state(service.model, 6)
    save_state(state, tmp_path / "decoder.safetensors")
    mixer = WeightMixer(service.serving)
    mixer.add("x", tmp_path)
    assert torch.equal(mixer.endpoints["x"], mixer.flat_from_state(state))
    with pytest.raises(ValueError, match="does not match the serving buffer"):
        mixer.add("y", torch.zeros(3))
