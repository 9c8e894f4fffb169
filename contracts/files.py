"""Spec and config files (YAML or JSON) read into a mapping, with one clear error each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import BaseModel

from contracts.errors import SpecError, parse

MAX_SPEC_BYTES = 1_000_000


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML/JSON file holds; SpecError naming the file for anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpecError(f"{what}: cannot read {path}: {error.strerror or error}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{what}: {path} is larger than {MAX_SPEC_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{what}: {path} is not UTF-8 text") from None
    if "\x00" in text:
        raise SpecError(f"{what}: {path} is not a text file")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else (
            f":{error.lineno}" if isinstance(error, json.JSONDecodeError) else "")
        problem = getattr(error, "problem", None) or getattr(error, "msg", None) or error
        raise SpecError(f"{what}: {path}{where} is not valid "
                        f"{'JSON' if path.suffix == '.json' else 'YAML'}: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{what}: {path} must hold a mapping of fields, not "
                        f"{type(raw).__name__}")
    return raw


class SpecFile(BaseModel):
    """A model that travels as a YAML file in a job folder (run spec, evaluation spec)."""

    WHAT: ClassVar[str] = "spec"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return parse(cls, read_mapping(path, cls.WHAT), cls.WHAT)
