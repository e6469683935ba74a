"""Flags generated from settings dataclasses (training.settings)."""
from dataclasses import dataclass

import pytest

from training.settings import parse, parser_for, setting, to_flags


@dataclass(frozen=True)
class Example:
    steps: int = setting(3, "optimizer steps")
    lr: float = setting(1e-3, "learning rate")
    init: str | None = setting(None, "start from here")
    quick: bool = setting(False, "a smoke run")
    temperatures: list[float] = setting([0.5, 1.0], "sampling temperatures")
    loss: str = setting("a", "which loss", choices=("a", "b"))

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")


@dataclass(frozen=True)
class Other:
    out: str = setting("runs/x", "run folder")


def test_defaults_types_and_two_dataclasses():
    ex, other = parse([Example, Other], [])
    assert ex == Example() and other == Other()
    ex, other = parse([Example, Other], ["--steps", "7", "--lr", "0.5", "--init", "w", "--quick", "--temperatures",
                                         "0.7", "1.3", "--loss", "b", "--out", "o"])
    assert ex == Example(7, 0.5, "w", True, [0.7, 1.3], "b") and other.out == "o"
    assert isinstance(ex.steps, int) and all(isinstance(t, float) for t in ex.temperatures)


def test_help_texts_and_defaults_are_shown():
    text = parser_for([Example]).format_help()
    assert "--steps STEPS" in text and "optimizer steps (default: 3)" in text and "--no-quick" in text
    assert "start from here (default: none)" in text


def test_bad_values_are_usage_errors_naming_the_setting():
    with pytest.raises(SystemExit, match="steps must be ≥ 1, got 0"):
        parse([Example], ["--steps", "0"])
    with pytest.raises(SystemExit):
        parse([Example], ["--loss", "c"])  # not among the choices


def test_to_flags_reproduces_the_settings():
    ex = Example(steps=9, init="w", quick=True, temperatures=[0.2])
    assert to_flags(ex) == ["--steps", "9", "--init", "w", "--quick", "--temperatures", "0.2"]
    assert parse([Example], to_flags(ex)) == (ex,)
    assert to_flags(ex, skip=("steps",))[:2] == ["--init", "w"]
