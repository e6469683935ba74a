"""Gradio app: steer quality ↔ diversity with λ, and A/B the merged model against the base model with CFG.

UI only: every model operation goes through `engine.service.MusicService`. Each browser session's
settings (λ included) travel with its own requests, so users never share a λ.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import gradio as gr
import numpy as np

from engine.merge import Blend
from engine.service import DEFAULT_NEGATIVE_PROMPT, MAX_CLIPS, MusicService, Request

NANO = Path(__file__).parent / "weights" / "nano"
EXAMPLES = ["Rock song.", "calm piano", "upbeat techno with a driving kick", "A peaceful sunset on a beach",
            "jazz trio, walking bass, brushed drums", "Bad audio quality."]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    # models
    p.add_argument("--base", default=os.environ.get("MUSIC_BASE"),
                   help="base model: a local MusicGen folder, a hub id (facebook/musicgen-small), or 'debug' "
                        "(tiny random model). Default: the shipped nano weights, else 'debug'.")
    p.add_argument("--theta-q", default=os.environ.get("MUSIC_THETA_Q"), help="quality decoder checkpoint (safetensors)")
    p.add_argument("--theta-d", default=os.environ.get("MUSIC_THETA_D"), help="diversity decoder checkpoint (safetensors)")
    p.add_argument("--allow-download", action="store_true", default=bool(os.environ.get("MUSIC_ALLOW_DOWNLOAD")),
                   help="let transformers download a hub checkpoint (off by default: everything runs offline)")
    # serving
    p.add_argument("--max-duration", type=float, default=float(os.environ.get("MUSIC_MAX_DURATION", 10)),
                   help="longest clip a user may ask for, in seconds")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--concurrency", type=int, default=2, help="generations running at once")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more are refused")
    return p.parse_args(argv)


def build_ui(service: MusicService, banner: list[str]) -> gr.Blocks:
    max_dur = service.max_duration_s

    def merge_now(lam):
        try:
            with service.gate.use(Blend.lerp("q", "d", lam)) as merge_s:
                pass
        except ValueError as e:
            raise gr.Error(str(e))
        return f"Merged weights for λ = {lam:.2f} in {merge_s * 1000:.1f} ms." if merge_s else f"λ = {lam:.2f} (already merged)."

    def generate(prompt, num_clips, duration, seed, temperature, lam, compare, guidance, negative,
                 progress=gr.Progress()):
        try:
            seed = None if seed in (None, "") else int(seed)
            req = Request(prompt or "", int(num_clips), float(duration), seed, float(temperature))
            merged = service.generate_merged(req, float(lam), progress=lambda i, n: progress(i / n, desc="merged model"))
            base = None
            if compare:
                cfg_req = Request(req.prompt, req.num_clips, req.duration_s, merged.seed, req.temperature,
                                  guidance=float(guidance), negative_prompt=negative or "")
                base = service.generate_base(cfg_req, progress=lambda i, n: progress(i / n, desc="base + CFG"))
        except ValueError as e:
            raise gr.Error(str(e))
        outputs = []
        for gen in (merged, base):
            for i in range(MAX_CLIPS):
                visible = gen is not None and i < gen.audio.shape[0]
                value = (gen.sample_rate, (gen.audio[i] * 32767).astype(np.int16)) if visible else None
                outputs.append(gr.Audio(value=value, visible=visible))
        lines = [f"**Seed {merged.seed}**"] + [f"- {n}" for n in merged.notices]
        for title, gen in (("Merged λ=%.2f (%s)" % (lam, merged.model), merged), ("Base + CFG γ=%g" % guidance, base)):
            if gen is not None:
                t = gen.timings
                lines.append(f"- {title}: {t['total']:.2f} s wall, {gen.real_time_factor:.1f}× real time "
                             f"(text {t['text']:.2f} s, sampling {t['sampling']:.2f} s, codec {t['codec']:.2f} s)")
        return outputs + ["\n".join(lines)]

    with gr.Blocks(title="Diversity-rewarded CFG distillation") as demo:
        gr.Markdown("# Diversity-rewarded CFG distillation\nSteer between the quality model θ_q (λ = 0) and the "
                    "diversity model θ_d (λ = 1); compare with the base model under classifier-free guidance.")
        for line in banner:
            gr.Markdown(f"> ⚠️ {line}")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", placeholder="e.g. calm piano with soft strings", lines=2)
                gr.Examples(EXAMPLES, inputs=prompt)
            with gr.Column():
                num_clips = gr.Slider(1, MAX_CLIPS, value=4, step=1, label="Clips")
                duration = gr.Slider(0.5, max_dur, value=min(5.0, max_dur), step=0.5, label="Duration (s)")
                seed = gr.Number(label="Seed (blank = random)", precision=0, value=None)
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature (0 = greedy)")
        with gr.Row():
            lam = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="λ: quality (0) ↔ diversity (1)")
            merge_info = gr.Markdown()
        with gr.Row():
            compare = gr.Checkbox(label="Compare with the base model + CFG", value=False)
            guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="CFG γ")
            negative = gr.Textbox(label="Negative prompt (blank = unconditional)", value=DEFAULT_NEGATIVE_PROMPT)
        go = gr.Button("Generate", variant="primary")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Merged model")
                merged_audio = [gr.Audio(label=f"Clip {i + 1}", visible=False) for i in range(MAX_CLIPS)]
            with gr.Column():
                gr.Markdown("### Base model + CFG")
                base_audio = [gr.Audio(label=f"Clip {i + 1}", visible=False) for i in range(MAX_CLIPS)]
        info = gr.Markdown()
        lam.release(merge_now, inputs=lam, outputs=merge_info, api_name="merge")
        go.click(generate, inputs=[prompt, num_clips, duration, seed, temperature, lam, compare, guidance, negative],
                 outputs=merged_audio + base_audio + [info], api_name="generate")
    return demo


def main(argv=None) -> None:
    args = parse_args(argv)
    banner = []
    base = args.base
    if base is None:
        if NANO.is_dir():
            base = str(NANO)
        else:
            base = "debug"
            banner.append("No trained weights in weights/nano yet: running a tiny random model, so clips are noise.")
    service, notices = MusicService.from_sources(base, args.theta_q, args.theta_d, args.allow_download, args.max_duration)
    demo = build_ui(service, banner + notices)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
