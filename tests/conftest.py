import pytest
import torch

from engine.checkpoint import save_json, save_state
from engine.embedding import AudioEmbedder, EmbeddingConfig
from engine.model import build_debug_model, debug_composite, from_composite
from engine.scorers import QualityConfig, QualityScorer
from engine.service import MusicService


@pytest.fixture(scope="session")
def composite():
    """A tiny random transformers composite MusicGen and our model split from it (they share modules)."""
    comp, tokenizer = debug_composite(seed=0)
    return comp, tokenizer, from_composite(comp, tokenizer, "debug-0")


@pytest.fixture(scope="session")
def model(composite):
    return composite[2]


def perturbed_state(model, seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """A decoder state dict near the base: a stand-in for a finetuned θ (about 0.35× the base's norm away from it,
    inside the service's limit for a finetune)."""
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=g)
            for n, p in model.decoder.model.named_parameters()}


def debug_service() -> MusicService:
    """A service over the tiny random model with θ_q and θ_d near its base (a fresh one per call)."""
    svc = MusicService(build_debug_model(seed=0))
    svc.add_checkpoint("q", perturbed_state(svc.model, 1))
    svc.add_checkpoint("d", perturbed_state(svc.model, 2))
    return svc


@pytest.fixture(scope="session")
def service():
    return debug_service()


def make_tiny_tower(**overrides):
    """The tiny audio tower (E and the quality scorer's) of the tests: 1 layer of width 32, 16-d embeddings."""

    return EmbeddingConfig(**dict(dict(dim=32, layers=1, heads=2, out_dim=16), **overrides))


@pytest.fixture(scope="session")
def tiny_tower():
    """A factory of tiny audio-tower configs (`make_tiny_tower`): tiny_tower(window_s=1.0)."""
    return make_tiny_tower


@pytest.fixture(scope="session")
def tiny_scorer_dirs(tmp_path_factory):
    """Folders of a tiny random E and quality scorer in the shipped format: (E folder, quality folder)."""

    root = tmp_path_factory.mktemp("scorers")
    torch.manual_seed(0)
    config = make_tiny_tower(window_s=1.0)
    e, q = AudioEmbedder(config), QualityScorer(QualityConfig(audio=config))
    save_state(dict(e.named_parameters()), root / "E" / "embedding.safetensors")
    save_json(dict(config=e.config_dict()), root / "E" / "model.json")
    save_state(dict(q.named_parameters()), root / "Q" / "quality.safetensors")
    save_json(dict(config=q.config_dict()), root / "Q" / "model.json")
    return root / "E", root / "Q"
