"""Command-line flags generated from settings dataclasses, so that every setting is declared once.

An entry point declares its settings as one or more dataclasses whose fields carry their help text (`setting`);
`parse` builds the argparse parser from them (flag `--name-with-dashes`, type from the annotation, default from the
field), builds the dataclasses by keyword, and turns a `ValueError` of their `__post_init__` into a usage error
(`SystemExit` with the message).
`to_flags` writes settings back as the flags that reproduce them (for model cards).

    @dataclass(frozen=True)
    class Settings:
        steps: int = setting(300, "optimizer steps")
        out: str = setting("runs/x", "run folder")

    settings, = parse([Settings], argv, description=__doc__)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Sequence


def setting(default: Any, help: str, *, choices: Sequence | None = None, flag: str | None = None) -> Any:
    """A dataclass field with its help text (and, optionally, allowed values or a flag name other than the field's)."""
    factory = isinstance(default, (list, dict, set))
    metadata = dict(help=help, choices=choices, flag=flag)
    if factory:
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _kind(annotation) -> tuple[type, bool, bool]:
    """(element type, optional, list) of an annotation such as `int`, `str | None`, `list[float]`."""
    optional, is_list = False, False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if typing.get_origin(annotation) in (list, tuple):
        is_list, annotation = True, typing.get_args(annotation)[0]
    return annotation, optional, is_list


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the dataclass `cls`, under a group named after it."""
    group = parser.add_argument_group(cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or "help" not in f.metadata:
            continue
        kind, optional, is_list = _kind(hints[f.name])
        default = _default(f)
        kwargs: dict[str, Any] = dict(dest=f.name, default=default, help=f.metadata["help"])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if is_list:
                kwargs["nargs"] = "*"
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        if default is not None and default != [] and kind is not bool:
            kwargs["help"] += f" (default: {' '.join(map(str, default)) if is_list else default})"
        elif optional and kind is not bool:
            kwargs["help"] += " (default: none)"
        group.add_argument(_flag(f), **kwargs)


def parser_for(classes: Sequence[type], description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for cls in classes:
        add_arguments(p, cls)
    return p


def parse(classes: Sequence[type], argv: Sequence[str] | None = None, description: str | None = None,
          defaults: dict | None = None) -> tuple:
    """Parse `argv` into one instance of each dataclass in `classes` (flags must not repeat across them).
    `defaults` overrides fields' defaults for this entry point (e.g. a benchmark that needs β > 0)."""
    p = parser_for(classes, description)
    p.set_defaults(**(defaults or {}))
    ns = vars(p.parse_args(argv))
    out = []
    for cls in classes:
        names = [f.name for f in dataclasses.fields(cls) if f.init and f.name in ns]
        try:
            out.append(cls(**{n: ns[n] for n in names}))
        except ValueError as e:  # a usage error that names the setting, as argparse's own are
            raise SystemExit(f"{p.prog}: error: {e}") from None
    return tuple(out)


def to_flags(*settings, skip: Sequence[str] = ()) -> list[str]:
    """The flags that reproduce `settings` (fields equal to their default are left out)."""
    flags = []
    for obj in settings:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in skip or "help" not in f.metadata or value == _default(f):
                continue
            kind, _, is_list = _kind(hints[f.name])
            if kind is bool:
                flags.append(_flag(f) if value else "--no-" + _flag(f)[2:])
            elif is_list:
                flags += [_flag(f), *map(str, value)]
            else:
                flags += [_flag(f), str(value)]
    return flags
