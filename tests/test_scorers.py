"""Quality scorers, one-call scoring, the CLAP path (tiny random ClapModel) and the scorer trainer's smoke run."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_tower
from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

from engine.checkpoint import CheckpointError
from engine.embedding import AudioEmbedder, load_embedder
from engine.scorers import ClapAdherence, QualityConfig, QualityScorer, Scorers, SentenceEncoder, load_quality_scorer
from training.corpus import BAD_CAPTIONS, generate_piece
from training.export import main as export_main
from training.train_embedding import main as train_e
from training.train_scorers import adherence_ceiling, caption_top1, main, roc_auc, soft_clip_loss, true_captions

TINY = make_tiny_tower()


@pytest.fixture(scope="module")
def sentences():
    return SentenceEncoder()


@pytest.fixture(scope="module")
def scorers(sentences):
    torch.manual_seed(0)
    return Scorers(AudioEmbedder(TINY).eval(), QualityScorer(QualityConfig(audio=TINY)).eval(), sentences)


def test_sentence_encoder_unit_and_cached(sentences):
    e = sentences(["rock song", "calm piano", "rock song"])
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(e[0], e[2]) and not torch.allclose(e[0], e[1])


def test_score_one_call_shapes_and_ranges(scorers):
    audio = np.random.default_rng(0).standard_normal((3, 16000 * 5)).astype(np.float32) * 0.1
    s = scorers.score(audio, 16000, "a calm piano piece")
    assert s.diversity.shape == (3, 3) and np.allclose(s.diversity, s.diversity.T, atol=1e-6)
    assert np.allclose(np.diag(s.diversity), 0) and 1 <= s.vendi <= 3 + 1e-6
    assert s.adherence.shape == s.audio_quality.shape == s.quality.shape == (3,)
    assert (np.abs(s.adherence) <= 1 + 1e-6).all() and ((s.audio_quality >= 0) & (s.audio_quality <= 1)).all()
    assert np.allclose(s.quality, 5 * s.adherence + s.audio_quality)
    assert s.seconds > 0


def test_identical_clips_have_no_diversity_and_scores_are_deterministic(scorers):
    clip = torch.randn(1, 16000 * 4) * 0.1
    s = scorers.score(clip.repeat(3, 1), 16000, "x")
    assert abs(s.mean_diversity) < 1e-5 and abs(s.vendi - 1) < 1e-3
    again = scorers.score(clip.repeat(3, 1), 16000, "x")
    assert np.array_equal(s.quality, again.quality)


def test_one_prompt_per_clip_and_bad_input(scorers):
    audio = torch.randn(2, 16000)
    s = scorers.score(audio, 16000, ["rock", "jazz"])
    assert s.adherence[0] != s.adherence[1]
    with pytest.raises(ValueError, match="2 clips but 3 prompts"):
        scorers.score(audio, 16000, ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        scorers.score(torch.full((2, 100), float("nan")), 16000, "a")
    with pytest.raises(ValueError, match=r"\(N, samples\)"):
        scorers.score(torch.randn(100), 16000, "a")
    assert Scorers().score(audio, 16000, "a").quality is None  # nothing loaded: nothing scored


def test_worst_window_decides_audio_quality():
    torch.manual_seed(0)
    q = QualityScorer(QualityConfig(audio=TINY)).eval()
    w = TINY.window_samples
    windows = torch.randn(4, w)
    _, clean = q.clips(windows, 2)
    per_window = q.quality_head(q.audio.features(windows)).view(2, 2)
    assert torch.allclose(clean, per_window.min(dim=1).values)


def test_roc_auc_known_values():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([1, 2], [1, 1])


def test_soft_clip_loss_treats_equal_captions_as_positives():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    ids = torch.tensor([0, 0, 1])  # clips 0 and 1 share a caption: swapping their texts costs nothing
    same = ids[:, None] == ids[None, :]
    ten = torch.tensor(10.0)
    assert torch.isclose(soft_clip_loss(a, a, same, ten), soft_clip_loss(a, a[[1, 0, 2]], same, ten))
    wrong = soft_clip_loss(a, a[[2, 2, 0]], same, ten)
    assert wrong > soft_clip_loss(a, a, same, ten) + 1


def test_soft_clip_loss_with_captions_true_of_other_clips():
    """Caption 1 ("Rock.") is true of clips 0 and 1, caption 0 only of clip 0. With those positives, text 1 between
    the two clips costs less than text 1 on clip 1 alone; with same-text positives it is the other way round."""
    audio = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    between = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    on_clip_1 = audio.clone()
    only_own = torch.eye(2, dtype=torch.bool)
    true_of = torch.tensor([[True, True], [False, True]])  # [i, j]: caption j is true of clip i
    ten = torch.tensor(10.0)
    assert soft_clip_loss(audio, between, true_of, ten) < soft_clip_loss(audio, on_clip_1, true_of, ten)
    assert soft_clip_loss(audio, between, only_own, ten) > soft_clip_loss(audio, on_clip_1, only_own, ten)
    # weighted positives: weight 0 for the other true caption is same-text positives, weight 1 is all true alike
    weighted = lambda w: torch.tensor([[1.0, w], [0.0, 1.0]])  # noqa: E731
    assert torch.isclose(soft_clip_loss(audio, between, weighted(0.0), ten),
                         soft_clip_loss(audio, between, only_own, ten))
    assert torch.isclose(soft_clip_loss(audio, between, weighted(1.0), ten),
                         soft_clip_loss(audio, between, true_of, ten))


def test_true_captions_of_a_piece():
    pieces = [generate_piece(0, i, 64) for i in range(40)]
    for pc in pieces:
        t = true_captions(pc)
        assert pc.caption in t and (t == set(BAD_CAPTIONS)) == pc.attributes["degraded"]


def test_trainer_smoke_exports_a_loadable_scorer(tmp_path):
    main(["--out", str(tmp_path / "run"), "--pool", "12", "--heldout", "24", "--batch", "6", "--steps", "2",
          "--layers", "1", "--dim", "32", "--distractors", "3", "--eval-every", "1"])
    export_main(["scorers", str(tmp_path / "run"), str(tmp_path / "Q")])
    q = load_quality_scorer(tmp_path / "Q")
    assert q.config.audio.dim == 32
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3
    (tmp_path / "Q" / "quality.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="quality.safetensors"):
        load_quality_scorer(tmp_path / "Q")
    with pytest.raises(CheckpointError, match="model.json"):
        load_quality_scorer(tmp_path / "nowhere")


def test_clap_adherence_on_a_tiny_random_clap(sentences):
    tok = sentences.tokenizer  # any offline tokenizer: ids only need to fit the tiny vocabulary
    text = ClapTextConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, projection_dim=8, max_position_embeddings=64)
    audio = ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=16, hidden_size=16, patch_embeds_hidden_size=8,
                            depths=[1, 1], num_attention_heads=[2, 2], projection_dim=8, enable_fusion=False)
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8))
    fe = ClapFeatureExtractor(feature_size=16, sampling_rate=8000, hop_length=160, max_length_s=2, fft_window_size=256,
                              truncation="rand_trunc")
    clap = ClapAdherence(model, fe, tok)
    s = Scorers(clap=clap).score(torch.randn(2, 16000), 16000, ["rock", "jazz"])
    assert s.adherence.shape == (2,) and (np.abs(s.adherence) <= 1 + 1e-6).all() and s.quality is None


def test_trainer_can_start_the_audio_tower_from_e(tmp_path):
    train_e(["--out", str(tmp_path / "E"), "--pool", "8", "--batch", "4", "--steps", "1", "--layers", "1",
             "--dim", "32", "--n-mels", "48", "--eval-candidates", "4", "--eval-every", "1"])
    main(["--out", str(tmp_path / "run"), "--init-audio", str(tmp_path / "E"), "--true-positives",
          "--other-true-weight", "0.5", "--pool", "12", "--heldout", "24", "--batch", "6", "--steps", "1",
          "--distractors", "3", "--eval-every", "1", "--lr", "1e-12"])
    q = load_quality_scorer(tmp_path / "run")
    e = load_embedder(tmp_path / "E")
    assert q.config.audio == e.config and q.config.audio.n_mels == 48
    x = torch.randn(2, 16000 * 4)
    assert torch.allclose(q.audio.features(x), e.features(x), atol=1e-3)  # lr ~0: E's tower, unchanged


def test_adherence_against_false_distractors_skips_captions_true_of_the_clip():
    """Clip 0's own caption loses to clip 1's generic caption, which is also true of clip 0: a miss against any
    other caption, a hit once only captions false for clip 0 may be distractors."""

    text = F.normalize(torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]]), dim=-1)  # "own", "generic", "other"
    audio = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]]), dim=-1)
    model = SimpleNamespace(text=lambda f: f)
    captions = ["own", "generic", "other"]
    truths = [{"own", "generic"}, {"generic"}, {"other"}]
    plain = caption_top1(model, audio, captions, text, 2, 0)
    fair = caption_top1(model, audio, captions, text, 2, 0, truths)
    assert plain == pytest.approx(2 / 3) and fair == 1.0
    # a scorer that only tells true captions from false ones: clip 0 ties with "generic" (1/2), the others win

    assert adherence_ceiling(captions, 2, 0, truths) == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert adherence_ceiling(captions, 2, 0, [{c} for c in captions]) == 1.0


def test_learned_scores_of_the_same_notes_agree_at_every_length():
    """A phrase of a take (0.5 s of θ_q's notes) looped to every length the app offers nano (0.5 s steps to its 8 s
    window) scores alike: E, adherence and audio quality within 0.02 from one scorer window (4 s) up, where the
    windows hold exactly the same music; below it the clip is repeated to fill the window and its seams are heard:
    audio quality within 0.35, adherence within 0.2, E's cosine to the 8 s embedding ≥ 0.9. (When the last window was
    zero-padded, a clean 5 s take scored P(clean) 0.01–0.26 against ≥ 0.94 at 4 and 8 s.) At 0.5 s, eight seams per
    window: E's cosine only ≥ 0.7 (measured 0.71 on a techno phrase; ≥ 0.93 from 1 s)."""
    from engine.service import MusicService, Request  # noqa: PLC0415

    service, _ = MusicService.from_sources("weights/nano", "weights/theta_q")
    scorers = Scorers.from_folders("weights/embedding", "weights/quality")
    codec, rate = service.model.codec, service.model.sample_rate
    for prompt in ("calm piano", "upbeat techno with a driving kick"):
        take = service.generate_merged(Request(prompt, 2, 1.0, seed=7), 0.0)
        frames = take.codes.shape[-1]
        phrase = take.codes[:, :, :frames // 2]  # 0.5 s
        lengths = np.arange(0.5, service.max_duration_s + 0.01, 0.5)
        quality, adherence, embeddings = [], [], []
        for seconds in lengths:
            n = int(round(seconds * frames))
            codes = phrase.repeat(1, 1, -(-n // phrase.shape[-1]))[:, :, :n]
            audio = codec.decode(codes).clamp(-1, 1)
            s = scorers.score(audio, rate, prompt)
            quality.append(s.audio_quality), adherence.append(s.adherence)
            embeddings.append(scorers.embed(audio, rate))
        quality, adherence, e = np.array(quality), np.array(adherence), torch.stack(embeddings)  # (lengths, 2, …)
        cos = (e * e[-1:]).sum(-1).numpy()
        long = lengths >= scorers.embedder.config.window_s
        spread = lambda x: (x.max(0) - x.min(0)).max()  # noqa: E731
        assert spread(quality[long]) <= 0.02 and spread(adherence[long]) <= 0.02 and cos[long].min() >= 0.98
        assert spread(quality) <= 0.35 and spread(adherence) <= 0.2, (prompt, quality, adherence)
        assert cos[lengths >= 1].min() >= 0.9 and cos.min() >= 0.7, (prompt, cos)
