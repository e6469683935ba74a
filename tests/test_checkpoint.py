"""Checkpoint loading: clear errors naming the file and the tensor; never unpickling."""
import pickle
from pathlib import Path

import pytest
import torch
from conftest import perturbed_state
from safetensors.torch import save_file

from engine.checkpoint import (
    CheckpointError,
    data_digest,
    file_metadata,
    is_signed,
    load_state,
    read_safetensors,
    save_state,
    sign,
    verify_checksum,
)
from engine.merge import WeightMixer
from engine.service import MAX_RELATIVE_DISTANCE, MusicService
from training import sign as sign_cli


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


# ---------------------------------------------------------------- tamper evidence
def _tampered(tmp_path, model, how: str, resign: bool = False):
    """θ_d as the shipped file would be, then changed the ways a hostile probe changed it."""
    fp16 = {n: t.half() for n, t in perturbed_state(model, 5).items()}
    path = save_state(fp16, tmp_path / how / "decoder.safetensors")
    state = {n: t.clone() for n, t in read_safetensors(path).items()}
    name = max(state, key=lambda n: state[n].numel())
    flat = state[name].view(-1)
    if how == "flipped low bits":  # 1000 values, lowest mantissa bit: invisible to every range check
        bits = flat.view(torch.int16)
        bits[:1000] ^= 1
    elif how == "fp16 max":
        flat[:100] = torch.finfo(torch.float16).max
    else:  # all zero
        state = {n: torch.zeros_like(t) for n, t in state.items()}
    metadata = file_metadata(path)  # the attacker keeps the old checksum
    save_file(state, str(path), metadata=metadata)
    if resign:
        save_file(state, str(path))
        sign(path)
    return path


@pytest.mark.parametrize("how", ["flipped low bits", "fp16 max", "all zero"])
def test_a_tampered_checkpoint_is_refused_naming_the_file(tmp_path, model, reference, how):
    path = _tampered(tmp_path, model, how)
    with pytest.raises(CheckpointError, match=f"{path}: the tensor data does not match the file's SHA-256"):
        load_state(path.parent, reference)
    assert is_signed(path)
    with pytest.raises(CheckpointError, match=str(path)):
        verify_checksum(path)


@pytest.mark.parametrize("how", ["fp16 max", "all zero"])
def test_a_resigned_checkpoint_far_from_the_base_is_refused_at_load(tmp_path, model, how):
    path = _tampered(tmp_path, model, how, resign=True)
    svc = MusicService(model)
    with pytest.raises(CheckpointError, match=f"{path.parent}: its weights lie .* from the base"):
        svc.add_checkpoint("d", str(path.parent))
    assert "d" not in svc.mixer.endpoints  # nothing half-registered
    svc.add_checkpoint("d", perturbed_state(model, 5))
    assert 0 < svc.relative_distance("d") < MAX_RELATIVE_DISTANCE


def test_saves_are_signed_and_signing_keeps_the_tensors(tmp_path, model):
    state = perturbed_state(model, 6)
    unsigned = tmp_path / "old.safetensors"
    save_file({n: t.contiguous() for n, t in state.items()}, str(unsigned), metadata={"note": "kept"})
    assert not is_signed(unsigned) and is_signed(save_state(state, tmp_path / "new.safetensors"))
    before = data_digest(unsigned)
    with pytest.raises(SystemExit):
        sign_cli.main(["--check", str(unsigned)])
    sign_cli.main([str(tmp_path)])
    assert is_signed(unsigned) and file_metadata(unsigned)["note"] == "kept" and data_digest(unsigned) == before
    assert all(torch.equal(read_safetensors(unsigned)[n], t) for n, t in state.items())
    sign_cli.main(["--check", str(tmp_path)])


def test_shipped_weights_are_all_signed():
    sign_cli.main(["--check", str(Path(__file__).resolve().parents[1] / "weights")])
