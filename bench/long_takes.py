"""Takes longer than nano's 8 s window: do they keep their tempo, beat, key and parts, and what do they cost?

    python -m bench.long_takes                       # the app's examples, 3 takes of 24 s each, λ = 0.5
    python -m bench.long_takes --no-bars             # the same without aligning contexts to bar lines

For each prompt, takes of `--seconds` with the shipped θ_q/θ_d at `--lam` (windowed continuation, `engine.generate.
generate_long`), read from their notes (`engine.heard.played`): the whole take against its own first window (the
plain 8 s take with the same seed). Reported: the share of takes whose first window had a steady tempo that keep it
over the whole take, the share in one key that stay in it, every part playing, and the seconds of sampling per second
of audio against the plain 8 s take's.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from engine import shipped
from engine.heard import played
from engine.merge import Blend
from engine.service import MusicService, Request
from engine.studio.pages import EXAMPLES


def measure(service: MusicService, prompt: str, args) -> list[dict]:
    window = service.model.num_frames(service.window_s)
    t = time.perf_counter()
    req = Request(prompt, args.clips, args.seconds, seed=args.seed)
    gen = service.generate_merged(req, Blend.lerp("q", "d", args.lam))
    seconds = time.perf_counter() - t
    rows = []
    for codes in gen.codes.numpy():
        whole, first = played(codes, prompt), played(codes[:, :window], prompt)
        rows.append(dict(prompt=prompt, tempo=(first["tempo"], whole["tempo"]),
                         in_key=("wrong notes" not in first["problems"], "wrong notes" not in whole["problems"]),
                         on_beat=("off the beat" not in first["problems"], "off the beat" not in whole["problems"]),
                         parts=(len(first["parts"]), len(whole["parts"])), wall_s=seconds / args.clips))
    return rows


def share(rows: list[dict], key: str, keep) -> str:
    had = [r for r in rows if keep(r[key][0])]
    kept = [r for r in had if keep(r[key][1])]
    return f"{len(kept)} of {len(had)}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=24.0)
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--no-bars", action="store_true", help="contexts cut at window − stride, not on bar lines")
    p.add_argument("--stride", type=float, default=None,
                   help="new music per window, as a share of it (default: engine.service.CONTINUATION_STRIDE)")
    args = p.parse_args(argv)
    service, _ = MusicService.from_sources(shipped.NANO, shipped.THETA_Q, shipped.THETA_D, max_duration_s=args.seconds)
    if args.no_bars or args.stride:  # other continuations than the engine's, to compare
        import engine.service as es  # noqa: PLC0415
        plain = es.continuation

        def other(model):
            c = plain(model)
            stride = round(c.window * args.stride) if args.stride else c.stride
            return dataclasses.replace(c, stride=stride, bar=None if args.no_bars else c.bar)
        es.continuation = other
    t = time.perf_counter()
    plain_gen = service.generate_merged(Request(EXAMPLES[0], args.clips, service.window_s, seed=args.seed), args.lam)
    plain_rate = (time.perf_counter() - t) / (args.clips * service.window_s)
    rows = [r for prompt in EXAMPLES[:-1] for r in measure(service, prompt, args)]  # the last example asks for noise
    for r in rows:
        print(f"{r['prompt'][:40]:40s} tempo {r['tempo'][0]:>15s} -> {r['tempo'][1]:15s} in key {r['in_key']} "
              f"on the beat {r['on_beat']} parts {r['parts']}")
    rate = sum(r["wall_s"] for r in rows) / (len(rows) * args.seconds)
    print(f"\n{len(rows)} takes of {args.seconds:g} s (first window {service.window_s:g} s), λ = {args.lam:g}, "
          f"stride {args.stride or 'default'}, contexts "
          f"{'cut where the stride says' if args.no_bars else 'on bar lines'}:")
    print(f"- steady tempo kept: {share(rows, 'tempo', lambda v: v != 'no steady tempo')}")
    print(f"- on the beat kept: {share(rows, 'on_beat', bool)}; in one key kept: {share(rows, 'in_key', bool)}")
    print(f"- every part still playing: {sum(r['parts'][1] >= r['parts'][0] for r in rows)} of {len(rows)}")
    print(f"- wall time per second of audio per take: {rate * 1000:.0f} ms ({plain_rate * 1000:.0f} ms for the plain "
          f"{service.window_s:g} s take, {rate / plain_rate:.2f}x; {plain_gen.audio.shape[0]} takes at once)")


if __name__ == "__main__":
    main()
