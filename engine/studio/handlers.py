"""The callbacks' wrappers, free of Gradio (it is handed in): one error path for every button and endpoint, and a
strict check of the values a request carries."""
from __future__ import annotations

import functools
import inspect

from engine.studio.core import LOG, explain_failure


def handled(what: str, on_error):
    """The one error wrapper: a callback's failure becomes `on_error(kind, message)` (`explain_failure`: one log line,
    a readable message, never internals). Keeps the signature: Gradio injects gr.Request and gr.Progress from it. A
    generator (a callback that streams) stays one, its failure yielded as its last update."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                return on_error(*explain_failure(what, e))

        @functools.wraps(fn)
        def wrapped_generator(*args, **kwargs):  # a callback that streams: its failure is its last update
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                yield on_error(*explain_failure(what, e))
        return wrapped_generator if inspect.isgeneratorfunction(fn) else wrapped
    return decorate


def api_error(gr):
    """on_error of the API endpoints: an error the client receives as such."""
    def raise_it(kind: str, message: str):
        raise gr.Error(message, title="Stopped" if kind == "stopped" else "Error", print_exception=False)
    return raise_it


def in_place(box, stopped: str = "Stopped.", failed_suffix: str = ""):
    """on_error of the buttons: the message in `box`, every other output left as it was (the previous takes stay)."""
    def show(kind: str, message: str):
        text = stopped if kind == "stopped" else f"⚠️ {message}" + (failed_suffix if kind == "failed" else "")
        return {box: text}
    return show


def strict_arity(demo, error) -> None:
    """A request with too few or too many values gets a readable error naming what is expected (Gradio's own check
    ignores extra values and answers too few with an empty error and a traceback in the log)."""
    def validate_inputs(block_fn, inputs):
        wanted = [getattr(b, "label", None) or type(b).__name__ for b in block_fn.inputs]
        message = None
        if len(inputs) != len(wanted):
            message = f"{block_fn.name} takes {len(wanted)} values ({', '.join(map(str, wanted))}), got {len(inputs)}"
        elif any(isinstance(v, dict) for v in inputs):  # e.g. a FileData naming a server path: no endpoint takes files
            message = f"{block_fn.name} takes text, numbers and true/false only, got an object"
        if message is not None:
            LOG.info("%s: rejected: %s", block_fn.name, message)
            raise error(message, print_exception=False)
    demo.validate_inputs = validate_inputs
