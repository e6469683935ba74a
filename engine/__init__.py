"""Serving engine: load a music model, sample with CFG, merge θ_q/θ_d by λ, serve many users safely.

Entry point: `engine.service.MusicService`. Never imports gradio."""
