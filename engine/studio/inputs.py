"""Every argument of every endpoint passes through these before any work, as sent.

The app's endpoints take raw values (Gradio's own conversion would clamp, truncate or stringify them silently, or fail
with an empty error); these turn them into what the Studio works with, or raise a readable `ValueError`.
"""
from __future__ import annotations

import re
import secrets

from engine.cfg import check_number, shown


def whole(name: str, value) -> int:
    """A whole number: an int, or a float without a fraction (sliders send 3.0). Never a bool or a string."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {shown(value)}")
    return check_number(name, value, integer=True)


def real(name: str, value) -> float:
    return float(check_number(name, value))


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def text(name: str, value, blank_ok: bool = True) -> str:
    """Text as sent (None = blank); lists, numbers or dicts are not text."""
    if value is None and blank_ok:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    return value


def seed(value) -> int:
    """A seed from the UI: blank (or None) = a fresh random one; else a whole number, as a number or as ASCII digits
    (other scripts' digits, signs and spaces inside are refused rather than guessed)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return secrets.randbelow(2**31)
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,19}", value.strip()):
            raise ValueError(f"seed must be a whole number or blank, got {shown(value)}")
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed must be a whole number or blank, got {shown(value)}")
    return check_number("seed", value, integer=True)


def seconds(name: str, value, default: float) -> float:
    """A time from the UI: blank (or None) = `default`; else a number, as a number or as ASCII digits with at most one
    decimal point ("2", "2.5")."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?", value.strip()):
            raise ValueError(f"{name} must be a time in seconds or blank, got {value!r}")
        value = float(value)
    return real(name, value)
