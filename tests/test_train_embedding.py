"""Training E: the semi-hard triplet loss, augmentations, and a smoke run that exports and loads."""
import numpy as np
import torch
import torch.nn.functional as F

from engine.embedding import load_embedder
from training.export import main as export_main
from training.train_embedding import augment, batch_indices, main, retrieval_hits, semi_hard_triplet_loss


def test_triplet_loss_cases():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert semi_hard_triplet_loss(a, a.clone(), margin=0.2) == 0  # positives identical, negatives orthogonal
    swapped = a.flip(0)  # each anchor's positive is the other's: every pair is wrong
    assert semi_hard_triplet_loss(a, swapped, margin=0.2) > 1


def test_retrieval_hits_per_group():
    """Groups of consecutive pieces; a query only competes with its own group's second halves."""
    a = F.normalize(torch.randn(10, 8), dim=-1)
    assert retrieval_hits(a, a.clone(), 5).tolist() == [1.0, 1.0]
    b = a.clone()
    b[[0, 1]] = b[[1, 0]]  # pieces 0 and 1 swap second halves: both miss, in group 0 only
    assert retrieval_hits(a, b, 5).tolist() == [0.6, 1.0] and retrieval_hits(a, b).tolist() == [0.8]
    assert retrieval_hits(a, b, 3).tolist() == [1 / 3, 1.0, 1.0]  # the 10th piece is left out
    try:
        retrieval_hits(a, b, 11)
    except ValueError as e:
        assert "11 candidates" in str(e)
    else:
        raise AssertionError("more candidates than pieces was accepted")


def test_augment_keeps_shape_and_changes_audio():
    x = torch.randn(3, 16000)
    y = augment(x, np.random.default_rng(0), 16000)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(x, y)


def test_smoke_run_exports_a_loadable_model(tmp_path):
    main(["--out", str(tmp_path / "run"), "--pool", "8", "--batch", "4", "--steps", "2", "--layers", "1", "--dim", "32",
          "--eval-candidates", "4", "--eval-every", "1"])
    export_main(["embedding", str(tmp_path / "run"), str(tmp_path / "E")])
    e = load_embedder(tmp_path / "E")
    assert e.embed(torch.randn(2, 16000 * 5), 16000).shape == (2, 64)
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3


def test_one_genre_batches_are_hard_negatives():
    genres = np.array(["rock"] * 5 + ["jazz"] * 3 + ["folk"] * 6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = batch_indices(rng, genres, 4, one_genre=True)
        assert len(set(rows)) == 4 and len(set(genres[rows])) == 1 and genres[rows[0]] != "jazz"  # jazz has < 4
    assert len(set(batch_indices(rng, genres, 14, one_genre=False))) == 14
    try:
        batch_indices(rng, genres, 7, one_genre=True)
    except ValueError as e:
        assert "no genre has 7 pieces" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_fine_tuning_starts_from_the_given_model(tmp_path):
    main(["--out", str(tmp_path / "a"), "--pool", "8", "--batch", "4", "--steps", "1", "--layers", "1", "--dim", "32",
          "--eval-candidates", "4", "--eval-every", "1"])
    export_main(["embedding", str(tmp_path / "a"), str(tmp_path / "E")])
    main(["--out", str(tmp_path / "b"), "--init", str(tmp_path / "E"), "--pool", "40", "--batch", "4", "--steps", "1",
          "--genre-batches", "1", "--eval-candidates", "4", "--eval-every", "1", "--lr", "1e-12"])
    a, b = load_embedder(tmp_path / "E"), load_embedder(tmp_path / "b")  # b's run folder has the same two files
    assert b.config == a.config and b.config.dim == 32
    x = torch.randn(2, 16000 * 4)
    assert torch.allclose(a.embed(x, 16000), b.embed(x, 16000), atol=1e-2)  # lr ~0: still the initial model
