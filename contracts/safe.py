"""Safe-string types: every string that can reach a shell, a file name or an MLflow filter.

Specs, confs and profiles travel from an untrusted trigger form into job scripts and
remote shells, so their strings are restricted to small character sets, checked once
here. Quoting (``shlex.quote``) happens as well where commands are built; the types are the
first line, and they give a clear message instead of a shell error.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

# Character sets, also used by the JSON schema of the trigger form (``pattern``).
PATH_CHARS = "A-Za-z0-9_./:@+=-"
SAFE_PATH_PATTERN = rf"^[{PATH_CHARS}]{{1,512}}$"
SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
MODULE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$"
OPTION_VALUE_PATTERN = r"^[A-Za-z0-9_.:,=+@%/-]{1,256}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
TIME_LIMIT_PATTERN = r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$"
MEMORY_PATTERN = r"^\d+[KMGT]?$"
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
LANGUAGE_PATTERN = r"^[a-z]{2,3}$"

SAFE_PATH_RE = re.compile(SAFE_PATH_PATTERN)
SAFE_NAME_RE = re.compile(SAFE_NAME_PATTERN)


def _matcher(pattern: str, message: str, allow_dash: bool = False):
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value) or (not allow_dash and value.startswith("-")):
            raise ValueError(message)
        return value

    return check


check_path = _matcher(
    SAFE_PATH_PATTERN,
    "may only contain letters, digits and _ . / : @ + = - and must not start with '-' "
    "(no spaces, quotes or shell metacharacters)")
check_name = _matcher(
    SAFE_NAME_PATTERN, "must start with a letter or digit and contain only letters, digits, "
    "_ . - (at most 128 characters)")


def check_relative_path(value: str) -> str:
    """A safe path that cannot climb out of the folder it is resolved against."""
    check_path(value)
    if ".." in PurePosixPath(value).parts:
        raise ValueError("must not contain '..'")
    return value


SafePath = Annotated[str, AfterValidator(check_path),
                     WithJsonSchema({"type": "string", "pattern": SAFE_PATH_PATTERN})]
SafeName = Annotated[str, AfterValidator(check_name),
                     WithJsonSchema({"type": "string", "pattern": SAFE_NAME_PATTERN})]
ModuleName = Annotated[str, AfterValidator(_matcher(MODULE_NAME_PATTERN, "is not a module name"))]
Token = Annotated[str, AfterValidator(_matcher(
    OPTION_VALUE_PATTERN, "is not a valid value (letters, digits, _.:,=+@%/-)"))]
EnvName = Annotated[str, AfterValidator(_matcher(
    ENV_NAME_PATTERN, "is not a valid environment variable name"))]
TimeLimit = Annotated[str, AfterValidator(_matcher(
    TIME_LIMIT_PATTERN, "is not a valid time limit ([D-]HH:MM:SS)"))]
Memory = Annotated[str, AfterValidator(_matcher(MEMORY_PATTERN, "is not a memory size (64G)"))]
FileName = Annotated[str, AfterValidator(_matcher(
    FILE_NAME_PATTERN, "is not an allowed file name (letters, digits, _ . -)"))]
LanguageCode = Annotated[str, AfterValidator(_matcher(
    LANGUAGE_PATTERN, "is not a language code like 'de'"))]


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


Arg = Annotated[str, AfterValidator(no_nul)]
