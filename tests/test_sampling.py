"""Pure sampling functions and the delay pattern."""
import pytest
import torch
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

from engine.sampling import apply_delay, cfg_logits, delay_valid_mask, plausible, revert_delay, sample_next_token


def test_greedy_is_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next_token(logits, None, temperature=0), logits.argmax(-1))


def test_same_generator_seed_same_tokens_and_different_seeds_differ():
    logits = torch.randn(64, 100)
    draw = lambda seed: sample_next_token(logits, torch.Generator().manual_seed(seed), 1.0)
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_top_k_limits_support():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(1)).expand(4000, -1)
    tokens = sample_next_token(logits, torch.Generator().manual_seed(0), temperature=2.0, top_k=5)
    assert set(tokens.tolist()) == set(torch.topk(logits[0], 5).indices.tolist())


def test_top_p_keeps_the_smallest_set_covering_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    tokens = sample_next_token(probs.log().expand(4000, -1), torch.Generator().manual_seed(0), top_p=0.75)
    assert set(tokens.tolist()) == {0, 1}  # 0.5 < 0.75 needs the second; 0.8 ≥ 0.75 stops
    tokens = sample_next_token(probs.log().expand(200, -1), torch.Generator().manual_seed(0), top_p=0.4)
    assert set(tokens.tolist()) == {0}


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0]]).expand(20000, -1)
    g = torch.Generator().manual_seed(0)
    hot = sample_next_token(logits, g, temperature=2.0).float().mean()
    cold = sample_next_token(logits, g, temperature=0.5).float().mean()
    assert cold < hot  # token 1 is rarer when colder


def test_cfg_formula():
    cond, neg = torch.randn(3, 10), torch.randn(3, 10)
    assert torch.equal(cfg_logits(cond, neg, 1.0), neg + (cond - neg))
    torch.testing.assert_close(cfg_logits(cond, neg, 1.0), cond)
    torch.testing.assert_close(cfg_logits(cond, neg, 3.0), 3 * cond + (1 - 3) * neg)


def test_delay_roundtrip():
    codes = torch.randint(0, 10, (2, 4, 7))
    delayed = apply_delay(codes, pad_id=99)
    assert delayed.shape == (2, 4, 11)
    assert torch.equal(revert_delay(delayed, 7), codes)
    assert torch.equal(delayed != 99, delay_valid_mask(4, 7).expand(2, -1, -1))


@pytest.mark.parametrize("frames", [3, 5, 12])
def test_delay_mask_matches_transformers(frames):
    # (transformers skips the pattern altogether below 2K - 1 columns; ours stays a delay pattern there)
    K = 4
    lm = MusicgenForCausalLM(MusicgenDecoderConfig(vocab_size=8, num_codebooks=K, hidden_size=8, num_hidden_layers=1,
                                                   num_attention_heads=2, ffn_dim=8, pad_token_id=8, bos_token_id=8))
    _, pattern = lm.build_delay_pattern_mask(torch.full((K, 1), 8), pad_token_id=8, max_length=frames + K)
    assert torch.equal(pattern == -1, delay_valid_mask(K, frames))


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]])
    probs = logits.softmax(-1)[0]
    n = 40000
    tokens = sample_next_token(logits.expand(n, -1), torch.Generator().manual_seed(0), temperature=1.0)
    freq = torch.bincount(tokens, minlength=5).float() / n
    assert torch.allclose(freq, probs, atol=4 * (probs * (1 - probs) / n).sqrt().max().item())
    assert freq[4] == 0  # a ~1e-14 token is never drawn
    top2 = sample_next_token(logits.expand(n, -1), torch.Generator().manual_seed(1), temperature=1.0, top_k=2)
    freq2 = torch.bincount(top2, minlength=5).float() / n
    assert torch.allclose(freq2[:2], logits[0, :2].softmax(-1), atol=0.02) and freq2[2:].sum() == 0


def test_plausibility_off_is_the_papers_cfg_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    cond, neg = torch.randn(3, 4, 64, generator=g), torch.randn(3, 4, 64, generator=g)
    assert torch.equal(cfg_logits(cond, neg, 3.0, 0.0), neg + 3.0 * (cond - neg))
    assert torch.equal(cfg_logits(cond, neg, 3.0), cfg_logits(cond, neg, 3.0, plausibility=0.0))


def test_plausibility_mask_keeps_exactly_the_plausible_tokens_and_they_alone_are_sampled():
    # p_cond ∝ (8, 4, 1, 0.5, 0.05): with α = 0.1 the tokens with p ≥ 0.8 stay, i.e. the first three
    cond = torch.tensor([[8.0, 4.0, 1.0, 0.5, 0.05]]).log()
    neg = torch.tensor([[8.0, 8.0, 8.0, 0.001, 0.0001]]).log()  # CFG alone would boost tokens 3 and 4 the most
    assert plausible(cond, 0.1).tolist() == [[True, True, True, False, False]]
    z = cfg_logits(cond, neg, 3.0, 0.1)
    assert torch.isinf(z[0, 3:]).all() and torch.isfinite(z[0, :3]).all()
    assert cfg_logits(cond, neg, 3.0).argmax().item() >= 3  # without the mask CFG picks an implausible token
    tokens = sample_next_token(z.expand(5000, -1), torch.Generator().manual_seed(0), temperature=1.5)
    assert set(tokens.tolist()) == {0, 1, 2}
    assert plausible(cond, 0.999).tolist() == [[True, False, False, False, False]]  # the most likely token stays
