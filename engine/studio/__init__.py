"""The app's Gradio-free half: the Studio (what each button does), its files, its pages and its start-up.

`app.py` is the Gradio layer over this package; tests and notebooks drive a `Studio` directly.

    from engine.studio import Studio, make_studio
"""
from engine.studio.core import (
    LOG,
    MAX_PAIR_CLIPS,
    MAX_SESSIONS,
    ExactScores,
    Result,
    StopSignal,
    Studio,
    System,
    Takes,
    ab_systems,
    explain_failure,
    rater_id,
    rater_session,
)
from engine.studio.files import MAX_OUTPUT_FOLDERS, Janitor, private_gradio_cache, prune, sweep_dead_owners
from engine.studio.startup import make_studio

__all__ = ["LOG", "MAX_OUTPUT_FOLDERS", "MAX_PAIR_CLIPS", "MAX_SESSIONS", "ExactScores", "Janitor", "Result",
           "StopSignal", "Studio", "System", "Takes", "ab_systems", "explain_failure", "make_studio",
           "rater_id", "rater_session",
           "private_gradio_cache", "prune", "sweep_dead_owners"]
