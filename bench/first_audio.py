"""Time to first audio: how long after Generate a musician hears a 30 s take start (issue 28).

    python -m bench.first_audio                    # both parts (about 5 minutes on 2 cores)
    python -m bench.first_audio --parts engine     # the engine only (no browser)

engine: a request for 30 s takes through `MusicService` with the first take streamed (`engine.stream.LiveTake`, as
the app does), from the call to the first chunk of music (text encoding, merge, sampling the first frames, rendering
or decoding them, the level): the shipped nano (4 takes, the app's default SoundFont) and a random model of
facebook/musicgen-small's shapes (decoder, a 768-wide 12-layer text encoder, the 32 kHz EnCodec) in fp32 and int8, 1
and 4 takes. A small-shape request is stopped once its first chunk is out (the rest would take minutes); nano's runs
to the end, and the time its whole take takes is reported beside it. Median of --repeats after one warm-up.

browser: the app as a user starts it (nano, the SoundFont), Debian's Chromium driven by Playwright, a fresh page per
round: the time from the click on Generate (4 takes of 30 s) to the first `playing` event of any audio element (the
streamed take: Gradio's HLS player), and to every take shown. The first round is the server's first request (cold).
Then the same rounds with --no-stream, for what streaming costs the finished takes. Needs chromium, ffmpeg and
playwright (`make e2e-deps`, requirements-dev.txt); skipped, saying so, without them.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench import write_json
from engine import loudness, threads
from engine.generate import GenerationCancelled
from engine.service import MusicService, Request
from engine.stream import LiveTake

PROMPT = "rock song with piano"
SECONDS = 30.0
CHROMIUM = "/usr/bin/chromium"


def first_chunk(service: MusicService, clips: int, seed: int, stop_after: bool, seconds: float = SECONDS) -> dict:
    """Seconds from the request to its first chunk of music (and to the end of its sampling, if let run)."""
    model = service.model
    live, cancel = LiveTake(model.codec, model.frame_rate, engine_thread=service.batcher is not None), threading.Event()
    req = Request(PROMPT, clips, seconds, seed)
    t0 = time.perf_counter()
    player = live.play(lambda tap: service.generate_merged(req, 0.5, tap=tap, cancel=cancel))
    next(player)  # the lead-in (silence, at once)
    next(player)
    first = time.perf_counter() - t0
    if stop_after:
        cancel.set()
    try:
        for _ in player:
            pass
    except GenerationCancelled:
        return {"first_audio_s": first}
    return {"first_audio_s": first, "request_s": time.perf_counter() - t0}


def engine_rows(repeats: int) -> list[dict]:
    """Threads as in the app (`engine.threads`): models built on a thread that ends, sampling on the engine thread
    (fuse=True), the request's and the listener's threads on one core each."""
    services = threads.in_own_thread(build_services)

    def measure_all():
        threads.one_core()
        loudness.preload()  # as the app does when it streams
        return [measure(service, name, dtype, clips, repeats, stop_after=name != NANO)
                for name, dtype, service in services for clips in ((4,) if name == NANO else (1, 4))]
    return threads.in_own_thread(measure_all)


NANO = "nano (shipped, SoundFont)"


def build_services() -> list[tuple[str, str, MusicService]]:
    from bench.gpu_check import SMALL, build  # noqa: PLC0415 (the random small-shape composite)
    from engine.model import from_composite, parse_dtype  # noqa: PLC0415

    nano, _ = MusicService.from_sources("weights/nano", "weights/theta_q", "weights/theta_d", max_duration_s=SECONDS,
                                        renderer="soundfont", fuse=True)
    services = [(NANO, "fp32", nano)]
    comp, tokenizer = build(SMALL)
    for dtype in ("fp32", "int8"):
        service = MusicService(from_composite(comp, tokenizer, "small", parse_dtype(dtype)), fuse=True)
        service.mixer.add("q", service.base.flat)
        service.mixer.add("d", service.base.flat)
        services.append(("musicgen-small shape (random)", dtype, service))
    return services


def measure(service: MusicService, model: str, dtype: str, clips: int, repeats: int, stop_after: bool,
            seconds: float = SECONDS) -> dict:
    first_chunk(service, clips, 0, stop_after, seconds)  # warm-up
    runs = [first_chunk(service, clips, seed, stop_after, seconds) for seed in range(1, repeats + 1)]
    row = {"model": model, "dtype": dtype, "takes": clips, "seconds": seconds, "runs": runs,
           "first_audio_s": statistics.median(r["first_audio_s"] for r in runs)}
    if not stop_after:
        row["request_s"] = statistics.median(r["request_s"] for r in runs)
    print(f"[engine] {model} {dtype}, {clips} take(s) of {seconds:g} s: first audio {row['first_audio_s']:.2f} s"
          + (f" (every take made, decoded and levelled in {row['request_s']:.2f} s)" if "request_s" in row else ""),
          flush=True)
    return row


# ---------------------------------------------------------------- the app in a browser
def browser_missing() -> str | None:
    if not Path(CHROMIUM).exists() or shutil.which("ffmpeg") is None:
        return "needs Debian's chromium and ffmpeg (make e2e-deps)"
    try:
        import playwright.sync_api  # noqa: F401, PLC0415
    except ImportError:
        return "needs playwright (requirements-dev.txt)"
    return None


def browser_rounds(rounds: int, flags: list[str]) -> list[dict]:
    """Each round on a fresh page: seconds from the click on Generate to the first `playing` event, and to every
    take shown."""
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    from bench.server import running_app  # noqa: PLC0415

    out = []
    with tempfile.TemporaryDirectory() as folder, running_app(
            ["--ratings-db", str(Path(folder) / "ratings.sqlite"), *flags], Path(folder)) as (url, _, _), \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        for _ in range(rounds):
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            page.locator("#prompt textarea").first.fill(PROMPT)
            box = page.locator("#duration input[type=number]")
            box.fill(str(SECONDS))
            box.press("Enter")
            box.blur()
            expect(page.locator("#duration input[type=range]")).to_have_value(f"{SECONDS:g}")
            page.evaluate("""() => { window.__heard = null; document.addEventListener('playing',
                () => { window.__heard = window.__heard ?? performance.now(); }, true); }""")
            clicked = page.evaluate("() => performance.now()")
            page.locator("#generate").click()
            expect(page.locator(".merged-clip:visible")).to_have_count(4, timeout=300_000)
            shown = page.evaluate("() => performance.now()")
            heard = page.evaluate("() => window.__heard")
            out.append({"first_audio_s": None if heard is None else (heard - clicked) / 1000,
                        "takes_shown_s": (shown - clicked) / 1000})
            page.close()
        browser.close()
    return out


def browser_rows(rounds: int) -> dict:
    streamed, plain = browser_rounds(rounds, []), browser_rounds(max(2, rounds - 2), ["--no-stream"])
    warm = [r["first_audio_s"] for r in streamed[1:]]
    row = {"rounds": streamed, "no_stream_rounds": plain, "cold_first_audio_s": streamed[0]["first_audio_s"],
           "warm_first_audio_s": {"median": statistics.median(warm), "max": max(warm)},
           "takes_shown_s": statistics.median(r["takes_shown_s"] for r in streamed[1:]),
           "takes_shown_no_stream_s": statistics.median(r["takes_shown_s"] for r in plain[1:])}
    print(f"[browser] nano, 4 takes of {SECONDS:g} s: first audio {row['cold_first_audio_s']:.2f} s on the server's "
          f"first request, then median {row['warm_first_audio_s']['median']:.2f} s (max "
          f"{row['warm_first_audio_s']['max']:.2f} s) after the click; every take shown after "
          f"{row['takes_shown_s']:.2f} s (without streaming {row['takes_shown_no_stream_s']:.2f} s)", flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["engine", "browser"], choices=["engine", "browser"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=6, help="browser rounds (the first is the server's first request)")
    p.add_argument("--out", default="bench/results/first_audio.json")
    args = p.parse_args(argv)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "engine" in args.parts:
        results["engine"] = engine_rows(args.repeats)
    if "browser" in args.parts:
        missing = browser_missing()
        if missing:
            print(f"[browser] skipped: {missing}", file=sys.stderr)
        else:
            results["browser"] = browser_rows(args.rounds)
    write_json(results, args.out)


if __name__ == "__main__":
    main()
