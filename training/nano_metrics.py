"""Measure a MusicGen-nano model from its generated tokens (the score codec makes every clip readable).

1. The parsers of `engine.exact` on true held-out corpus pieces: per kind of request (instrument, drums, kit, tempo,
   key, genre), how often a piece meets its own caption's requests (they should all be met: the parser's accuracy)
   and another piece's caption's (chance level: how much a check discriminates), how many requests were checkable
   or undecided, how often the clean flag holds on clean and on degraded pieces, which parts play, and the tempo
   read from the beat against the true tempo, per tempo (`--tempo-pieces` pieces).
2. Generations for validation captions (held-out, after the test prompts: `--split test` for those), without CFG,
   with the paper's CFG (γ = 3, "Bad audio quality.") and with `--guidance/--plausibility/--negative-prompt` (e.g.
   the chosen teacher): per kind, the share of requests met; the share of clean clips and of each clean part; the
   share of clips in which each part plays; exact quality.
3. Seed diversity for one prompt, text-to-waveform speed, codec speed.

    python -m training.nano_metrics --model weights/nano --out weights/nano/metrics.json
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from engine import exact, shipped
from engine.checkpoint import save_json
from engine.model import load_model
from engine.score_codec import STREAMS, TEMPOS
from engine.service import DEFAULT_NEGATIVE_PROMPT, MusicService, Request
from training.corpus import HELD_OUT_EVERY, TEST_PROMPT_POOL, generate_piece
from training.settings import parse, setting


@dataclass(frozen=True)
class NanoMetricsSettings:
    model: str = setting(shipped.NANO, "the nano folder")
    seed: int = setting(0, "corpus seed of the held-out captions")
    prompts: int = setting(48, "held-out clean captions to prompt with")
    split: str = setting("validation", "which held-out captions prompt: 'validation' (after the test prompts) or "
                                       "'test'", choices=("validation", "test"))
    tempo_pieces: int = setting(1000, "held-out pieces whose tempo is read against the truth")
    clips: int = setting(4, "clips per caption")
    seconds: float = setting(8.0, "clip length (s)")
    guidance: float = setting(1.5, "CFG γ of the third generation row (e.g. the chosen teacher)")
    plausibility: float = setting(0.0, "its plausibility mask α")
    negative_prompt: str = setting(DEFAULT_NEGATIVE_PROMPT, "its negative prompt ('' = unconditional)")
    out: str | None = setting(None, "write the metrics JSON here")


def edit_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised Hamming distance between two token grids (4, T) of equal shape."""
    return float((a != b).mean())


def heldout_pieces(seed: int, n: int, frames: int, degraded: bool = False, skip: int = 0) -> list:
    """The held-out pieces, clean (or degraded) ones only, from the `skip`-th on."""
    pieces, i = [], 0
    while len(pieces) < n + skip:
        piece = generate_piece(seed, i, frames)
        if piece.attributes["degraded"] == degraded:
            pieces.append(piece)
        i += HELD_OUT_EVERY
    return pieces[skip:]


def tempo_accuracy(seed: int, n: int, frames: int) -> dict:
    """Per true tempo (BPM), the share of clean held-out pieces whose tempo `engine.exact` reads right, among those
    that show one (MIN_ONSETS onsets), and how many show none (undecided)."""
    right, shown, pieces = defaultdict(int), defaultdict(int), defaultdict(int)
    for piece in heldout_pieces(seed, n, frames):
        r, d = exact.read(piece.codes), piece.attributes["sixteenth_frames"]
        pieces[d] += 1
        if r.onsets >= exact.MIN_ONSETS:
            shown[d] += 1
            right[d] += r.sixteenth == d
    return {f"{TEMPOS[d]:.1f}": dict(right=right[d] / max(shown[d], 1), pieces=pieces[d],
                                     undecided=pieces[d] - shown[d]) for d in sorted(pieces)}


def _shares(hits: dict[str, list[bool]]) -> dict[str, dict]:
    return {k: dict(share=float(np.mean(v)), n=len(v)) for k, v in sorted(hits.items())}


def parser_accuracy(clean: list, degraded: list) -> dict:
    """Requests met by the true pieces (own captions) and by other pieces' captions; clean flag on both kinds."""
    own, other, undecided = defaultdict(list), defaultdict(list), 0
    for j, piece in enumerate(clean):
        r = exact.read(piece.codes)
        for name, check in exact.requests(piece.caption).items():
            verdict = check(r)
            undecided += verdict is None
            own[exact.kind(name)] += [] if verdict is None else [verdict]
        for name, check in exact.requests(clean[(j + 7) % len(clean)].caption).items():
            verdict = check(r)
            other[exact.kind(name)] += [] if verdict is None else [verdict]
    kinds = (("clean", clean), ("degraded", degraded))
    parts = {label: {k: float(np.mean([exact.clean_parts(exact.read(p.codes), p.caption)[k] for p in pieces]))
                     for k in ("parts", "no_noise", "on_grid", "in_key")} for label, pieces in kinds}
    flag = {label: float(np.mean([exact.clean(exact.read(p.codes), p.caption) for p in pieces]))
            for label, pieces in kinds}
    playing = {name: float(np.mean([exact.parts_playing(exact.read(p.codes), p.caption)[name] for p in clean]))
               for name in STREAMS}
    return dict(own_caption=_shares(own), other_caption=_shares(other), clean_parts=parts, clean_flag=flag,
                playing=playing, undecided_requests=undecided,
                no_checkable_request=sum(not exact.requests(p.caption) for p in clean), pieces=len(clean),
                unchecked_words=sum(len(exact.unchecked(p.caption)) for p in clean))


def generation_metrics(service: MusicService, pieces: list, s: NanoMetricsSettings, guidance: float,
                       plausibility: float = 0.0, negative: str = DEFAULT_NEGATIVE_PROMPT) -> dict:
    met, parts, playing, quality = defaultdict(list), defaultdict(list), defaultdict(list), []
    for j, piece in enumerate(pieces):
        req = Request(piece.caption, num_clips=s.clips, duration_s=s.seconds, seed=j, guidance=guidance,
                      plausibility=plausibility, negative_prompt=negative)
        for codes in service.generate_base(req).codes.numpy():
            score = exact.score_clip(codes, piece.caption)
            for name, ok in score.met.items():
                met[exact.kind(name)].append(ok)
            for k, ok in exact.clean_parts(score.reading, piece.caption).items():
                parts[k].append(ok)
            for k, ok in exact.parts_playing(score.reading, piece.caption).items():
                playing[k].append(ok)
            quality += [score.quality] if score.quality is not None else []
    return dict(requests_met=_shares(met), clean_parts={k: float(np.mean(v)) for k, v in parts.items()},
                playing={k: float(np.mean(v)) for k, v in playing.items()},
                clean=float(np.mean([all(x) for x in zip(*parts.values())])), exact_quality=float(np.mean(quality)),
                clips=len(quality))


def seed_diversity(service: MusicService, s: NanoMetricsSettings, frames: int) -> dict:
    gen = service.generate_base(Request("Rock song.", num_clips=8, duration_s=s.seconds, seed=123)).codes.numpy()
    same = service.generate_base(Request("Rock song.", num_clips=8, duration_s=s.seconds, seed=123)).codes.numpy()
    pairs = [(a, b) for a in range(len(gen)) for b in range(a + 1, len(gen))]
    rock = [pc.codes for pc in (generate_piece(s.seed, i, frames) for i in range(400))
            if pc.attributes["genre"] == "rock" and not pc.attributes["degraded"]][:8]
    return dict(mean_token_distance=float(np.mean([edit_distance(gen[a], gen[b]) for a, b in pairs])),
                mean_event_distance=exact.event_diversity(gen), corpus_rock_event_distance=exact.event_diversity(
                    np.stack(rock)), same_seed_distance=edit_distance(gen[0], same[0]))


def speeds(service: MusicService, pieces: list, seconds: float) -> dict:
    times = []
    for s in range(3):
        t = time.perf_counter()
        service.generate_base(Request("calm piano with soft strings", num_clips=4, duration_s=8.0, seed=s))
        times.append(time.perf_counter() - t)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    codes = torch.as_tensor(np.stack([pc.codes for pc in pieces[:8]]).astype(np.int64))
    t = time.perf_counter()
    service.model.codec.decode(codes)
    rtf = len(codes) * seconds / (time.perf_counter() - t)
    torch.set_num_threads(threads)
    return dict(text_to_waveform_4_clips_8s_s=float(np.median(times)), codec_real_time_factor_one_core=rtf)


def print_table(results: dict) -> None:
    parser, rows = results["parsers"], [k for k in results if k.startswith("generation")]
    print(f"{'request kind':14s}{'parser: own':>16s}{'other caption':>16s}" + "".join(f"{k[11:]:>30s}" for k in rows))
    for kind, v in parser["own_caption"].items():
        other = parser["other_caption"].get(kind, dict(share=float("nan")))["share"]
        gens = "".join(f"{results[k]['requests_met'].get(kind, dict(share=float('nan')))['share']:>30.3f}"
                       for k in rows)
        print(f"{kind:14s}{v['share']:>10.3f} (n={v['n']:3d}){other:>16.3f}{gens}")
    flag = parser["clean_flag"]
    print(f"{'clean':14s}{flag['clean']:>16.3f}{flag['degraded']:>16.3f}"
          + "".join(f"{results[k]['clean']:>30.3f}" for k in rows) + "   (parser: on clean / on degraded pieces)")
    print(f"{'exact quality':46s}" + "".join(f"{results[k]['exact_quality']:>30.3f}" for k in rows))
    for name in STREAMS:
        print(f"{name + ' plays':14s}{parser['playing'][name]:>16.3f}{'':16s}"
              + "".join(f"{results[k]['playing'][name]:>30.3f}" for k in rows))
    print("tempo read right (true pieces, per BPM):", json.dumps(results["tempo"]))
    print(json.dumps({k: results[k] for k in ("seed diversity", "speed")}))


def main(argv=None) -> dict:
    (s,) = parse([NanoMetricsSettings], argv, description=__doc__)
    torch.manual_seed(0)
    service = MusicService(load_model(s.model))
    frames = int(s.seconds * service.model.frame_rate)
    truth = heldout_pieces(s.seed, s.prompts, frames)
    results = dict(parsers=parser_accuracy(truth, heldout_pieces(s.seed, s.prompts, frames, degraded=True)))
    results["tempo"] = tempo_accuracy(s.seed, s.tempo_pieces, frames)
    if s.split == "validation":  # after the test prompts, by position and by text (as corpus.validation_prompts)
        test = {p.caption for p in heldout_pieces(s.seed, TEST_PROMPT_POOL, frames)}
        pieces = [p for p in heldout_pieces(s.seed, 3 * s.prompts, frames, skip=TEST_PROMPT_POOL)
                  if p.caption not in test][:s.prompts]
    else:
        pieces = heldout_pieces(s.seed, s.prompts, frames)
    results["generation no CFG"] = generation_metrics(service, pieces, s, 1.0)
    results["generation CFG γ=3 (paper)"] = generation_metrics(service, pieces, s, 3.0)
    label = f"generation CFG γ={s.guidance:g} α={s.plausibility:g}{'' if s.negative_prompt else ' uncond.'}"
    results[label] = generation_metrics(service, pieces, s, s.guidance, s.plausibility, s.negative_prompt)
    results["seed diversity"] = seed_diversity(service, s, frames)
    results["speed"] = speeds(service, truth, s.seconds)
    print_table(results)
    if s.out:
        save_json(dict(results, model=s.model, prompts=s.prompts, split=s.split, clips=s.clips, seconds=s.seconds),
                  s.out)
    return results


if __name__ == "__main__":
    main()
