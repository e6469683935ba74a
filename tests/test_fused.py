"""Requests fused into one sampler call (engine.fused): each gets exactly the takes it gets alone, a stopped one is let
go at once, and requests that cannot share a call (another blend, length or CFG-ness) run in calls of their own."""
import threading

import pytest
import torch
from conftest import debug_service

import engine.kernels
from engine.fused import SamplerBatcher
from engine.generate import GenerationCancelled
from engine.service import Request

pytestmark = pytest.mark.skipif(not engine.kernels.has_few_row_linear(), reason="fusing needs the C matmul kernel")


@pytest.fixture(scope="module")
def service():
    return debug_service()  # its own: these tests set its batcher


def together(service, jobs, batcher=None) -> list:
    """Run (request, λ or None for the base) pairs at once from threads; their codes (or exceptions), in order."""
    service.batcher = batcher or SamplerBatcher()
    out = [None] * len(jobs)

    def run(i, req, lam, cancel=None):
        try:
            gen = service.generate_base(req, cancel=cancel) if lam is None else service.generate_merged(req, lam,
                                                                                                     cancel=cancel)
            out[i] = gen.codes
        except Exception as e:  # noqa: BLE001 (the test looks at it)
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def alone(service, req, lam):
    service.batcher = None
    return (service.generate_base(req) if lam is None else service.generate_merged(req, lam)).codes


REQUESTS = [  # different prompts (text widths), takes, seeds, sampling; CFG and plain; the base and two blends
    (Request("jazz trio", 3, 0.3, seed=1), 0.5),
    (Request("a much longer prompt about loud rock drums and distorted guitars", 2, 0.3, seed=2, top_p=0.9), 0.5),
    (Request("calm piano", 1, 0.3, seed=3, temperature=0.0), 0.5),
    (Request("techno", 2, 0.3, seed=4, guidance=3.0, negative_prompt="noise"), 0.5),
    (Request("folk song", 2, 0.3, seed=5, guidance=2.0, plausibility=0.1), 0.5),
    (Request("jazz trio", 2, 0.3, seed=6), 0.2),  # another blend: its own call
    (Request("ambient", 2, 0.3, seed=7), None),  # the base: its own call
    (Request("jazz trio", 2, 0.5, seed=8), 0.5),  # another length: its own call
]


def test_every_request_gets_exactly_its_takes_alone(service):
    expected = [alone(service, req, lam) for req, lam in REQUESTS]
    got = together(service, REQUESTS)
    for req, exp, out in zip(REQUESTS, expected, got, strict=True):
        assert isinstance(out, torch.Tensor), out
        assert torch.equal(out, exp), req


def test_a_call_beyond_the_kernels_row_limit_is_chunked_and_still_exact(service):
    """8 requests × 8 takes = 64 rows: the matmuls run in chunks of the kernel's 48 rows, not through BLAS."""
    jobs = [(Request(f"prompt {i}", 8, 0.2, seed=i), 0.5) for i in range(8)]
    expected = [alone(service, req, lam) for req, lam in jobs]
    calls = []
    batcher = SamplerBatcher()
    original = batcher._next_call
    batcher._next_call = lambda: calls.append(original()) or calls[-1]
    got = together(service, jobs, batcher)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert max(sum(e.job.rows for e in call) for call in calls) > 48  # fused beyond the kernel's rows


def test_a_stopped_request_is_let_go_and_the_others_are_unchanged(service):
    req = Request("jazz trio", 2, 0.5, seed=11)
    expected = alone(service, req, 0.5)
    stop = threading.Event()
    stop.set()  # stopped from the start: it leaves the line (or the call at its first step)
    service.batcher = SamplerBatcher()
    out = [None, None]

    def run(i, cancel):
        try:
            out[i] = service.generate_merged(req, 0.5, cancel=cancel).codes
        except GenerationCancelled as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(0, None)), threading.Thread(target=run, args=(1, stop))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert torch.equal(out[0], expected) and isinstance(out[1], GenerationCancelled)
    assert service.batcher._incoming == 0 and not service.batcher._line


def test_a_request_that_fails_before_sampling_does_not_hold_the_others(service, monkeypatch):
    service.batcher = SamplerBatcher(gather_s=30)  # a call would wait this long for an announced request
    encode = service.model.encode_text

    def failing(prompts):
        if prompts == ["bad"]:
            raise ValueError("bad prompt")
        return encode(prompts)

    monkeypatch.setattr(service.model, "encode_text", failing)
    with pytest.raises(ValueError, match="bad prompt"):
        service.generate_merged(Request("bad", 1, 0.2, seed=1), 0.5)
    assert service.batcher._incoming == 0  # withdrawn: the next call does not wait for it
    done = threading.Event()
    threading.Thread(target=lambda: (service.generate_merged(Request("ok", 1, 0.2, seed=1), 0.5), done.set())).start()
    assert done.wait(20)
