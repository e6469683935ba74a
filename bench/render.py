"""How fast nano's notes become sound, through each renderer, and a figure of the same notes through both.

1. Render speed: corpus pieces of 8 s (4 and 8 at once) through the wavetable synthesiser and through the SoundFont
   renderer (each bank installed), with the loudness normalisation every take gets: seconds of audio per second of
   wall time, median of `--repeats`, and the SoundFont's time as a ratio of the synthesiser's.
2. Text to wave: a whole 4 × 8 s generation (θ_q ↔ θ_d at λ = 0.5, no CFG) through the service with each renderer,
   the time from the request to the normalised takes (the app's "Generate" without scoring and files).
3. FLAC vs WAV: the bytes of 8 pieces' takes (16-bit stereo) encoded both ways, as the "all takes" ZIP holds them.
4. `--figure PATH`: spectrograms (0–16 kHz, log magnitude) of one corpus piece through both renderers, labelled.

    python -m bench.render --repeats 3 --figure docs/renderers.png
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchaudio.functional as AF

from engine import shipped
from engine.score_codec import ScoreCodec
from engine.service import MusicService, Request, takes_audio
from engine.soundfont import soundfonts
from training.corpus import generate_piece

SECONDS = 8.0
FIGURE_PIECE = 3  # a corpus piece with all four parts (techno in E♭ minor: square lead, synth bass, pad, drums)


def codecs() -> dict[str, ScoreCodec]:
    out = {"synth": ScoreCodec()}
    for bank in soundfonts():
        if bank.path.is_file():
            out[f"soundfont {bank.name}"] = ScoreCodec(renderer="soundfont", soundfont=str(bank.path))
    return out


def _pieces(n: int) -> torch.Tensor:
    """The codes of n corpus pieces of 8 s (seed 1)."""
    return torch.as_tensor(np.stack([generate_piece(1, i, int(SECONDS * 32)).codes for i in range(n)]).astype(np.int64))


def render_speed(codec: ScoreCodec, n: int, repeats: int) -> float:
    """Seconds of audio per second of wall time, rendering and normalising n pieces of 8 s (median of repeats)."""
    codes = _pieces(n)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        takes_audio(codec, codes)
        times.append(time.perf_counter() - t)
    return n * SECONDS / statistics.median(times)


def text_to_wave(renderer: str, repeats: int) -> float:
    """Median seconds from a 4 × 8 s request to the takes, θ_q ↔ θ_d at λ = 0.5, through `renderer`."""
    service, _ = MusicService.from_sources(shipped.NANO, shipped.THETA_Q, shipped.THETA_D, renderer=renderer)
    times = []
    for i in range(repeats + 1):  # the first one warms the caches
        t = time.perf_counter()
        service.generate_merged(Request("upbeat funk with slap bass", num_clips=4, duration_s=SECONDS, seed=i), 0.5)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def flac_ratio(codec: ScoreCodec) -> float:
    """FLAC bytes / WAV bytes of 8 pieces' normalised takes (16-bit, as the app writes them)."""
    import io  # noqa: PLC0415

    import soundfile as sf  # noqa: PLC0415

    codes = _pieces(8)
    sizes = {"WAV": 0, "FLAC": 0}
    for take in takes_audio(codec, codes):
        for fmt in sizes:
            buffer = io.BytesIO()
            sf.write(buffer, take.T, codec.sample_rate, format=fmt, subtype="PCM_16")
            sizes[fmt] += len(buffer.getvalue())
    return sizes["FLAC"] / sizes["WAV"]


def figure(path: str) -> None:
    from PIL import Image, ImageDraw  # noqa: PLC0415

    from engine.figures import _font  # noqa: PLC0415

    piece = generate_piece(0, FIGURE_PIECE, int(6 * 32))
    codes = torch.as_tensor(piece.codes[None].astype(np.int64))
    rows, font = [], _font()[0]
    for codec in codecs().values():
        audio = torch.from_numpy(takes_audio(codec, codes)[0].mean(axis=0))
        if codec.sample_rate != 32000:  # the same frequency axis for every row (band-limited: no images)
            audio = AF.resample(audio, codec.sample_rate, 32000)
        mag = torch.stft(audio, 1024, 384, window=torch.hann_window(1024), return_complex=True).abs()[:512]
        mag = mag.view(128, 4, -1).mean(dim=1)  # 125 Hz per row
        db = (20 * torch.log10(mag + 1e-6)).clamp(-80, 20)
        img = Image.fromarray(((db + 80) / 100 * 255).flip(0).numpy().astype(np.uint8)).convert("RGB")
        label = Image.new("RGB", (img.width, 22), "white")
        ImageDraw.Draw(label).text((4, 4), f"{codec.description}: 0–16 kHz (bottom to top), 6 s", fill="black",
                                   font=font)
        rows += [label, img]
    out = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    out.save(path)
    print(f"wrote {path} ({piece.attributes['genre']}, {piece.attributes['key']} {piece.attributes['mode']}: "
          f"{piece.attributes['lead']}, {piece.attributes['bass']}, {piece.attributes['harmony']}, "
          f"{piece.attributes['drums']} drums)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--figure", help="write the spectrogram figure here")
    args = p.parse_args(argv)
    print(f"{torch.get_num_threads()} threads; 8 s pieces, rendered and loudness-normalised")
    all_codecs = codecs()
    for n in (4, 8):
        base = render_speed(all_codecs["synth"], n, args.repeats)
        for name, codec in all_codecs.items():
            speed = render_speed(codec, n, args.repeats) if name != "synth" else base
            print(f"  {n} takes, {name:28s} {speed:6.1f} s of audio per s  ({base / speed:.2f}x the synth's time)")
    for name, codec in all_codecs.items():
        print(f"FLAC / WAV bytes, 8 takes, {name:28s} {flac_ratio(codec):.2f}")
    for renderer in ("synth", "soundfont"):
        print(f"text to wave, 4 × 8 s, {renderer:9s}: {text_to_wave(renderer, args.repeats):.2f} s")
    if args.figure:
        figure(args.figure)


if __name__ == "__main__":
    main()
