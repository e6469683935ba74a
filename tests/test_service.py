"""The service: validation, determinism, notices, and concurrent users with their own λ."""
import threading

import numpy as np
import pytest
import torch

from engine.service import MAX_PROMPT_CHARS, Request

FAST = dict(num_clips=2, duration_s=0.3)


def _same(a, b):
    return np.array_equal(a.audio, b.audio) and bool((a.codes == b.codes).all())


def test_same_seed_same_clips_different_seed_different(service):
    a = service.generate_merged(Request("rock song", seed=1, **FAST), 0.5)
    b = service.generate_merged(Request("rock song", seed=1, **FAST), 0.5)
    c = service.generate_merged(Request("rock song", seed=2, **FAST), 0.5)
    assert _same(a, b) and not _same(a, c)
    assert a.audio.shape == (2, 1, round(0.3 * service.model.sample_rate)) and a.audio.dtype == np.float32


def test_random_seed_is_reported_and_reproduces(service):
    a = service.generate_base(Request("jazz", **FAST))
    assert isinstance(a.seed, int)
    assert _same(a, service.generate_base(Request("jazz", seed=a.seed, **FAST)))


def test_lambda_changes_the_clips(service):
    a = service.generate_merged(Request("rock", seed=3, **FAST), 0.0)
    b = service.generate_merged(Request("rock", seed=3, **FAST), 1.0)
    assert not _same(a, b)
    assert a.model == "1·q" and b.model == "1·d"


def test_timings_and_cfg_path(service):
    g = service.generate_base(Request("ambient pads", seed=0, guidance=3.0, **FAST))
    assert {"text", "prefill", "sampling", "codec", "total"} <= set(g.timings)
    assert g.real_time_factor > 0 and len(g.step_times_s) == 15 + service.model.decoder.num_codebooks - 1
    m = service.generate_merged(Request("ambient pads", seed=0, **FAST), 0.2)
    assert "merge" in m.timings


def test_empty_prompt_is_unconditional_with_notice(service):
    g = service.generate_base(Request("   ", seed=0, **FAST))
    assert g.request.prompt == "" and any("unconditionally" in n for n in g.notices)


def test_prompt_over_the_token_cap_is_truncated_with_notice(service, monkeypatch):
    monkeypatch.setattr(service.model.text_encoder, "max_tokens", 8)
    long = service.generate_base(Request("a slow and very calm piano piece with soft strings", seed=0, **FAST))
    short = service.generate_base(Request("calm piano", seed=0, **FAST))
    assert any("truncated to 8 tokens" in n for n in long.notices) and not short.notices


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_clips=0), "num_clips must be between 1 and 8"),
    (dict(num_clips=9), "num_clips must be between 1 and 8"),
    (dict(num_clips=2.5), "num_clips must be an integer"),
    (dict(duration_s=0), "duration_s must be > 0"),
    (dict(duration_s=-1), "duration_s must be > 0"),
    (dict(duration_s=float("nan")), "duration_s must be finite"),
    (dict(guidance=0.5), "guidance γ must be ≥ 1"),
    (dict(guidance=float("inf")), "guidance must be finite"),
    (dict(temperature=-1), "temperature must be ≥ 0"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(top_k=-1), "top_k must be ≥ 0"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(seed=-3), "seed must be between"),
    (dict(seed="12"), "seed must be an integer"),
    (dict(prompt="a" * (MAX_PROMPT_CHARS + 1)), "prompt is 501 characters long; the limit is 500"),
    (dict(prompt=None), "prompt must be a string"),
    (dict(negative_prompt="b" * 1000), "negative_prompt is 1000 characters"),
])
def test_bad_requests_are_refused(kwargs, message):
    kwargs = {"prompt": "ok"} | kwargs
    with pytest.raises(ValueError, match=message):
        Request(**kwargs)


def test_duration_above_model_maximum(service):
    with pytest.raises(ValueError, match="duration_s must be at most"):
        service.generate_base(Request("x", duration_s=service.max_duration_s + 1))


@pytest.mark.parametrize("lam", [-0.01, 1.01, float("nan")])
def test_bad_lambda(service, lam):
    with pytest.raises(ValueError, match="λ must be a number in"):
        service.generate_merged(Request("x", **FAST), lam)


def test_concurrent_users_each_get_their_own_lambda(service):
    """Users with different λ and seeds, interleaved over threads, get exactly their solo results."""
    jobs = [(lam, seed) for lam, seed in ((0.0, 11), (1.0, 12), (0.5, 13), (0.25, 14))] * 2
    solo = {job: service.generate_merged(Request("techno", seed=job[1], **FAST), job[0]) for job in set(jobs)}
    results, errors = {}, []
    start = threading.Barrier(len(jobs))

    def user(i, lam, seed):
        try:
            start.wait()
            results[i] = service.generate_merged(Request("techno", seed=seed, **FAST), lam)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=user, args=(i, *job)) for i, job in enumerate(jobs)]
    base_thread = threading.Thread(target=lambda: results.setdefault("base", service.generate_base(
        Request("techno", seed=11, guidance=3.0, **FAST))))
    for t in threads + [base_thread]:
        t.start()
    for t in threads + [base_thread]:
        t.join()
    assert not errors
    for i, job in enumerate(jobs):
        assert _same(results[i], solo[job]), f"user {i} with λ={job[0]} got someone else's clips"
    assert _same(results["base"], service.generate_base(Request("techno", seed=11, guidance=3.0, **FAST)))


def test_takes_longer_than_the_window_are_continued_and_start_with_the_plain_take():
    from engine.model import build_debug_model  # noqa: PLC0415
    from engine.service import MAX_TAKE_WINDOWS, MusicService  # noqa: PLC0415

    svc = MusicService(build_debug_model(seed=0), max_duration_s=12.0)
    assert svc.max_duration_s == 12.0 and svc.window_s < 12.0
    plain = svc.generate_base(Request("x", num_clips=1, duration_s=svc.window_s, seed=5))
    long = svc.generate_base(Request("x", num_clips=1, duration_s=12.0, seed=5))
    assert long.audio.shape[-1] == 12 * long.sample_rate
    assert np.array_equal(long.codes[:, :, :plain.codes.shape[-1]], plain.codes)
    assert MusicService(build_debug_model(seed=0), max_duration_s=1e6).max_duration_s == MAX_TAKE_WINDOWS * svc.window_s


def test_nano_continues_each_clip_from_a_bar_line_of_its_own():
    from engine.model import load_model  # noqa: PLC0415
    from engine.service import continuation  # noqa: PLC0415
    from training.corpus import generate_piece  # noqa: PLC0415

    steps = continuation(load_model("weights/nano"))
    assert steps.window == 256 and steps.stride == 128 and steps.bar is not None
    for index in range(6):
        piece = generate_piece(0, index, 256)
        if not piece.attributes["degraded"]:
            assert steps.bar(torch.from_numpy(piece.codes.astype(np.int64))) == 16 * piece.attributes[
                "sixteenth_frames"], piece.attributes


@pytest.mark.skipif(not __import__("engine.kernels").kernels.has_few_row_linear(), reason="int8 needs the C kernel")
def test_int8_serving_requantizes_after_every_merge():
    """--dtype int8: the serving decoder's int8 copies follow each merge, so λ = 0.3 after λ = 0.9 gives exactly what a
    fresh int8 service gives at λ = 0.3; and the clips stay close to fp32's (the same seed)."""
    from conftest import perturbed_state  # noqa: PLC0415

    from engine.model import load_model  # noqa: PLC0415
    from engine.service import MusicService  # noqa: PLC0415

    def make(dtype):
        svc = MusicService(load_model("debug", dtype))
        svc.add_checkpoint("q", perturbed_state(svc.model, 1))
        svc.add_checkpoint("d", perturbed_state(svc.model, 2))
        return svc

    req = Request("jazz trio", num_clips=2, duration_s=0.3, seed=4, temperature=0.0)
    moved, fresh = make(torch.int8), make(torch.int8)
    assert moved.serving.quantized and moved.base.quantized
    moved.generate_merged(req, 0.9)
    assert torch.equal(moved.generate_merged(req, 0.3).codes, fresh.generate_merged(req, 0.3).codes)
    agree = (fresh.generate_merged(req, 0.3).codes == make(torch.float32).generate_merged(req, 0.3).codes)
    assert agree.float().mean() > 0.9
