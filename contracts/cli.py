"""Command-line flags generated from a pydantic model, as the trigger forms are.

``add_flags(parser, Model)`` adds ``--field-name`` for each field (help from the field's
description, choices from a Literal, ``--no-x`` for a boolean that defaults to true);
``flag_values(args, Model)`` returns the values given, for ``Model.model_validate``. The
model stays the only definition of names, defaults and bounds; argparse only collects
strings, so a bad value is reported by the model's own validation, naming the field.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _inner(annotation: Any) -> Any:
    """``X | None`` -> X; ``Annotated[X, ...]`` -> X."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _inner(rest[0]) if len(rest) == 1 else annotation
    if origin is typing.Annotated:
        return _inner(typing.get_args(annotation)[0])
    return annotation


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
              exclude: tuple[str, ...] = ()) -> None:
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        kind = _inner(field.annotation)
        default = field.get_default(call_default_factory=True)
        help_text = (field.description or field.title or "").rstrip(".")
        if kind is bool:
            if default is True:
                parser.add_argument(f"--no-{name.replace('_', '-')}", dest=name,
                                    action="store_false", default=None,
                                    help=f"switch off: {help_text.lower()}")
            else:
                parser.add_argument(_flag(name), dest=name, action="store_true",
                                    default=None, help=help_text)
            continue
        options: dict[str, Any] = {"dest": name, "default": None}
        if typing.get_origin(kind) is Literal:
            values = typing.get_args(kind)
            options["choices"] = values
            options["type"] = type(values[0])
        elif typing.get_origin(kind) is tuple:
            options["type"] = lambda text: [_number(p.strip()) for p in text.split(",")
                                            if p.strip()]
            help_text += " (comma-separated)"
        elif kind in (int, float):
            options["type"] = _number  # the model refuses what is not a number
        if default is not None and default != ():
            help_text += f"; default {default}"
        parser.add_argument(_flag(name), help=help_text, **options)


def flag_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields given on the command line (absent flags keep the model's defaults)."""
    return {name: getattr(args, name) for name in model.model_fields
            if getattr(args, name, None) is not None}
