"""One way to report bad input: a line per bad field, ``field: message``.

Every entry point (CLIs, spec files, trigger confs, profiles) turns pydantic's errors into
this form, so a user sees the same kind of message wherever the input came from.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """Input that failed validation; the message names each bad field."""

    @classmethod
    def from_validation(cls, error: ValidationError, prefix: str = "") -> SpecError:
        """``prefix`` and one line per bad field; a single bad field stays on one line."""
        body = describe_errors(error)
        if "\n" not in body:
            prefix = prefix.rstrip("\n") + " " if prefix.strip() else prefix
        return cls(f"{prefix}{body}" if prefix else body)


def describe_errors(error: ValidationError) -> str:
    """One line per bad field. Cross-field checks (model validators) have no location;
    their messages start with the field name and a colon, used as the location instead."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not field:
            field, _, message = message.partition(": ")
        lines.append(f"{field}: {message}" if field else message)
    return "\n".join(lines)


def parse(model: type[M], raw: Any, what: str) -> M:
    """``model`` validated from ``raw``; SpecError naming ``what`` and each bad field."""
    if not isinstance(raw, dict):
        raise SpecError(f"invalid {what}: expected a mapping of fields, got "
                        f"{type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise SpecError.from_validation(error, f"invalid {what}:\n") from None
