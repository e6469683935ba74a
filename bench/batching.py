"""Several users asking for the same blend at once: fused sampling on the engine thread vs each request on its own.

    python -m bench.batching                 # nano (shipped weights) and the musicgen-small shape, 4 and 8 users
    python -m bench.batching --sizes nano    # quick

Each round starts N user threads together, each asking the service for takes at λ = 0.5 with its own seed (nano: 4
takes of 4 s, the page's default; small: 1 take of 1 s, random weights of musicgen-small's shape, θ_q = θ_d = base,
its audio decoding excluded).
"one by one" is the engine as the app ran it before: every request samples on its own thread, side by side under the
blend gate. "fused" is the app now (`engine.fused`, `engine.threads`): the requests' sampling fused into calls on the
engine thread with every core, each user thread computing its text and audio on one core. Models are loaded on a
thread of their own, as the app does. Reported: wall time per round (median of --repeats, rounds alternating),
throughput in seconds of audio per second, the ratio, and whether every fused user got exactly the codes of their
request made alone in the app (one request at a time).
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from bench import write_json
from bench.engine import SIZES
from engine import kernels, threads
from engine.fused import SamplerBatcher
from engine.model import debug_composite, from_composite
from engine.service import MusicService, Request

WORKLOAD = {"nano": (4, 4.0), "small": (1, 1.0)}  # takes, seconds per user
PROMPT = "calm piano with soft strings"


class Silence:
    """A codec that excludes audio decoding from the measure (as bench.engine does): silence of the takes' length."""

    def __init__(self, codec):
        self.sample_rate, self.frame_rate = codec.sample_rate, codec.frame_rate

    def decode(self, codes: torch.Tensor, keep_channels: bool = False) -> torch.Tensor:
        return torch.zeros(codes.shape[0], 1, round(codes.shape[-1] * self.sample_rate / self.frame_rate))


def load(size: str) -> MusicService:
    if size == "nano":
        return MusicService.from_sources("weights/nano", "weights/theta_q", "weights/theta_d")[0]
    comp, tokenizer = debug_composite(seed=0, **SIZES["small"])
    model = from_composite(comp, tokenizer, "small")
    model.codec = Silence(model.codec)  # the random shape's codec has fewer codebooks: excluded
    service = MusicService(model)
    for name in ("q", "d"):
        service.mixer.add(name, service.base.flat)
    return service


def round_(service: MusicService, batcher: SamplerBatcher | None, users: int, takes: int,
           seconds: float) -> tuple[float, list]:
    """One round of `users` simultaneous requests (fused through `batcher`, or each on its own where it is None);
    (wall seconds, each user's codes)."""
    service.batcher = batcher
    fused = batcher is not None
    codes, start = [None] * users, threading.Barrier(users + 1)

    def user(i: int) -> None:
        if fused:
            threads.one_core()  # as the app's request threads (engine.studio.Studio)
        start.wait()
        codes[i] = service.generate_merged(Request(PROMPT, takes, seconds, seed=i), 0.5).codes

    workers = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for w in workers:
        w.start()
    start.wait()
    t = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - t, codes


def alone(service: MusicService, batcher: SamplerBatcher, users: int, takes: int, seconds: float) -> list:
    """Each user's codes from a request made alone in the app: text on a one-core request thread, sampled on the
    engine thread (torch's own matmuls round differently on 1 and on 2 threads, so the reference runs where the app
    runs it)."""
    threads.one_core()
    service.batcher = batcher
    return [service.generate_merged(Request(PROMPT, takes, seconds, seed=i), 0.5).codes for i in range(users)]


def measure(service: MusicService, users: int, takes: int, seconds: float, repeats: int) -> dict:
    times = {"one_by_one": [], "fused": []}
    same, batcher = True, SamplerBatcher()  # one engine thread for the whole run, as in the app
    for b in (None, batcher):  # warm-up
        round_(service, b, users, takes, seconds)
    reference = threads.in_own_thread(alone, service, batcher, users, takes, seconds)
    for _ in range(repeats):
        times["one_by_one"].append(round_(service, None, users, takes, seconds)[0])
        wall, fused = round_(service, batcher, users, takes, seconds)
        times["fused"].append(wall)
        same &= all(torch.equal(a, b) for a, b in zip(reference, fused, strict=True))
    audio = users * takes * seconds
    row = {"users": users, "takes": takes, "seconds": seconds, "same_codes": same}
    for name, ts in times.items():
        row[f"{name}_s"] = statistics.median(ts)
        row[f"{name}_audio_s_per_s"] = audio / row[f"{name}_s"]
    row["throughput_ratio"] = row["one_by_one_s"] / row["fused_s"]
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--users", nargs="+", type=int, default=[4, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench/results/batching.json")
    args = p.parse_args(argv)
    if not kernels.has_few_row_linear():
        raise SystemExit(f"fusing needs the C matmul kernel, which does not run here: {kernels.status()}")
    results = {"torch": torch.__version__, "cores": threads.CORES, "kernels": kernels.status(), "rows": []}
    for size in args.sizes:
        service = threads.in_own_thread(load, size)  # the main thread opens no OpenMP pool (engine.threads)
        takes, seconds = WORKLOAD[size]
        for users in args.users:
            row = {"size": size} | threads.in_own_thread(measure, service, users, takes, seconds, args.repeats)
            results["rows"].append(row)
            print(f"[{size}] {users} users × {takes} × {seconds:g} s: one by one {row['one_by_one_s']:.2f} s "
                  f"({row['one_by_one_audio_s_per_s']:.1f} s of audio per s), fused {row['fused_s']:.2f} s "
                  f"({row['fused_audio_s_per_s']:.1f}): {row['throughput_ratio']:.2f}x; fused codes = alone: "
                  f"{row['same_codes']}", flush=True)
        del service
    write_json(results, args.out)


if __name__ == "__main__":
    main()
