import pytest
import torch

from engine.model import build_debug_model, debug_composite, from_composite
from engine.service import MusicService


@pytest.fixture(scope="session")
def composite():
    """A tiny random transformers composite MusicGen and our model split from it (they share modules)."""
    comp, tokenizer = debug_composite(seed=0)
    return comp, tokenizer, from_composite(comp, tokenizer, "debug-0")


@pytest.fixture(scope="session")
def model(composite):
    return composite[2]


def perturbed_state(model, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A decoder state dict near the base: a stand-in for a finetuned θ."""
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=g) for n, p in model.decoder.model.named_parameters()}


@pytest.fixture(scope="session")
def service():
    svc = MusicService(build_debug_model(seed=0))
    svc.add_checkpoint("q", perturbed_state(svc.model, 1))
    svc.add_checkpoint("d", perturbed_state(svc.model, 2))
    return svc
