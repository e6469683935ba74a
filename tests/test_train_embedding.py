"""Training E: the semi-hard triplet loss, augmentations, and a smoke run that exports and loads."""
import numpy as np
import torch
import torch.nn.functional as F

from engine.embedding import load_embedder
from training.train_embedding import augment, main, semi_hard_triplet_loss


def test_triplet_loss_cases():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert semi_hard_triplet_loss(a, a.clone(), margin=0.2) == 0  # positives identical, negatives orthogonal
    swapped = a.flip(0)  # each anchor's positive is the other's: every pair is wrong
    assert semi_hard_triplet_loss(a, swapped, margin=0.2) > 1


def test_augment_keeps_shape_and_changes_audio():
    x = torch.randn(3, 16000)
    y = augment(x, np.random.default_rng(0), 16000)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(x, y)


def test_smoke_run_exports_a_loadable_model(tmp_path):
    main(["--out", str(tmp_path / "run"), "--pool", "8", "--batch", "4", "--steps", "2", "--layers", "1", "--dim", "32",
          "--eval-candidates", "4", "--eval-every", "1"])
    main(["--out", str(tmp_path / "run"), "--export", str(tmp_path / "E")])
    e = load_embedder(tmp_path / "E")
    assert e.embed(torch.randn(2, 16000 * 5), 16000).shape == (2, 64)
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3
