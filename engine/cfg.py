"""A classifier-free guidance setting, in one place: γ, the negative prompt and what is cut after guidance.

The sampler (`engine.sampling.cfg_logits`), the serving `Request`, the app's comparison column and blind-A/B
systems, the trainer's teacher (`training.objective.DistillConfig.teacher`), the evaluation and the recipe all speak
of a CFG setting through `CfgSetting`: its checks, its names and its teacher.json form live here only.

    z = γ · z(x) + (1 − γ) · z(x⁻)        (paper Eq. 1; x⁻ the negative prompt, "" = the unconditional branch)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NEGATIVE_PROMPT = "Bad audio quality."  # the paper's negative prompt
PAPER_GAMMA = 3.0  # the CFG γ the paper distils and compares against
MAX_NEGATIVE_CHARS = 500  # as long as a prompt may be (engine.service.MAX_PROMPT_CHARS)


# the one number check of the engine (Request, CfgSetting and the app's inputs use it), here because cfg imports nothing
MAX_INTEGER = 2**63  # larger integers (JSON allows any) are refused before any conversion could overflow


def shown(value, limit: int = 40) -> str:
    """A value as an error message quotes it: its repr, cut short (a 1 MB value must not make a 1 MB message)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < MAX_INTEGER else "a huge integer"
    return text if len(text) <= limit else text[:limit] + "…"


def check_number(name: str, value, integer: bool = False):
    """`value` if it is a finite number (an int if `integer`; never a bool; an int below 2**63 in size); else a
    readable ValueError."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {shown(value)}")
    if isinstance(value, int) and abs(value) >= MAX_INTEGER:
        raise ValueError(f"{name} is too large ({len(str(abs(value)))} digits)")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class CfgSetting:
    """γ (1 = no guidance), the negative prompt ("" = unconditional), the plausibility mask α applied before guidance
    (our addition; 0 = off, the paper's CFG) and top-p applied after it (our addition; 0 = off)."""

    guidance: float = PAPER_GAMMA
    negative: str = DEFAULT_NEGATIVE_PROMPT
    plausibility: float = 0.0
    top_p: float = 0.0

    def __post_init__(self):
        if not check_number("guidance γ", self.guidance) >= 1:
            raise ValueError(f"guidance γ must be ≥ 1 (1 = no CFG), got {self.guidance}")
        if not isinstance(self.negative, str):
            raise ValueError(f"negative prompt must be text, got {type(self.negative).__name__}")
        if len(self.negative) > MAX_NEGATIVE_CHARS:
            raise ValueError(f"negative_prompt is {len(self.negative)} characters long; the limit is "
                             f"{MAX_NEGATIVE_CHARS}")
        if not 0 <= check_number("plausibility α", self.plausibility) < 1:
            raise ValueError(f"plausibility α must be in [0, 1) (0 = off), got {self.plausibility}")
        if not 0 <= check_number("top-p", self.top_p) <= 1:
            raise ValueError(f"top_p must be in [0, 1] (0 = off), got {self.top_p}")

    # ------------------------------------------------------------------ names
    @property
    def cuts(self) -> str:
        """" α=0.1 top-p=0.9": what is cut around guidance ("" for the paper's CFG)."""
        return (f" α={self.plausibility:g}" if self.plausibility else "") + (f" top-p={self.top_p:g}"
                                                                             if self.top_p else "")

    @property
    def label(self) -> str:
        """The name a listener sees (the app's comparison column, A/B system, the trainer's eval rows)."""
        return f"base + CFG γ={self.guidance:g}{self.cuts}{'' if self.negative else ' unconditional'}"

    @property
    def description(self) -> str:
        """The report's words: "γ = 3, top-p = 0.9, negative prompt"."""
        cut = self.cuts.replace(" ", ", ").replace("=", " = ")
        return f"γ = {self.guidance:g}{cut}, {'negative prompt' if self.negative else 'unconditional'}"

    @property
    def family(self) -> str:
        """The evaluation's γ-front this setting lies on (every γ, the same negative prompt and cuts)."""
        cut = self.cuts.replace(" ", ", ").lstrip(", ")
        what = "negative prompt" if self.negative else "unconditional"
        return f"CFG γ ({what}, {cut})" if cut else f"CFG γ ({what})"

    def at(self, guidance: float) -> CfgSetting:
        """The same setting at another γ (the evaluation's fronts)."""
        return CfgSetting(guidance, self.negative, self.plausibility, self.top_p)

    # ------------------------------------------------------------------ requests and files
    def request_fields(self) -> dict:
        """The fields of an `engine.service.Request` (and `training.heldout.measure`) that carry this setting."""
        return dict(guidance=self.guidance, negative_prompt=self.negative, plausibility=self.plausibility,
                    top_p=self.top_p)

    def to_json(self) -> dict:
        """teacher.json's fields (written by `training.teacher_sweep`)."""
        return dict(guidance=self.guidance, negative_prompt=self.negative, plausibility=self.plausibility,
                    top_p=self.top_p)

    @classmethod
    def from_json(cls, data: dict) -> CfgSetting:
        return cls(float(data["guidance"]), str(data["negative_prompt"]), float(data["plausibility"]),
                   float(data.get("top_p", 0.0)))

    @classmethod
    def load(cls, path: str | Path | None) -> CfgSetting:
        """The setting in a teacher.json (`training.teacher_sweep`); the paper's CFG when there is no file."""
        if not path or not Path(path).exists():
            return PAPER_CFG
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a teacher file ({e})") from None


PAPER_CFG = CfgSetting()  # γ = 3 with "Bad audio quality.", nothing cut
