"""Which threads compute with every core: one engine thread samples, every other thread computes on one core.

Measured here (2 cores, torch's bundled libgomp): a decode loop that takes 0.19 s on the main thread took 0.80 s on
any other thread once the main thread had used OpenMP (0.015 s vs 0.17 s for 3,000 layer norms). libgomp keeps one
pool of worker threads per thread that opens parallel regions; once the pools together hold more threads than there
are cores, every pool stops spin-waiting between regions and sleeps instead, and a decode step is hundreds of tiny
regions, each then paying a wake-up. Gradio runs each request on a thread of its own, so every request paid it.

So the serving engine keeps a single pool: its engine thread (`engine.fused.SamplerBatcher`'s worker) runs every
sampler call with all cores (`all_cores`), and the app's other threads (the main thread, which loads the models, and
the request threads, which encode text, render and score) run torch on one core each (`one_core`). Results do not
depend on the thread count (the C kernels split work by position and output block, never by thread).
"""
from __future__ import annotations

import threading

import torch

CORES = torch.get_num_threads()  # what torch chose for this process (or OMP_NUM_THREADS), before any thread changed it


def one_core() -> None:
    """This thread's torch ops run on one core (opening no OpenMP pool). Not the main thread's: a script or test that
    drives the engine from it keeps its cores (the app's main thread only starts the server)."""
    if threading.current_thread() is not threading.main_thread() and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def all_cores() -> None:
    """This thread's torch ops use every core the process has."""
    if torch.get_num_threads() != CORES:
        torch.set_num_threads(CORES)


def in_own_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) on a thread that ends when it returns, so that the OpenMP pool its torch ops open ends with
    it (the app loads its models this way: a pool the main thread opened would live as long as the process)."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 (raised again in the caller's thread)
            result["error"] = e

    thread = threading.Thread(target=run, name="load")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
