"""Swiss Judgment Prediction cases from the hub, local files, or the synthetic generator.

All three sources end as one ``datasets.Dataset`` in the SJP schema (``id, year, text,
label, language, region, canton, legal area, source_language``), so formatting and
training never care where the cases came from. Local files are read and checked row by
row before anything trains: a bad row is reported with its file, line and field, together
with how many rows were bad, and nothing is created (no MLflow run, no run folder).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from contracts.errors import describe_errors
from contracts.spec import DataSpec
from training.synthetic import generate_cases

SJP_HUB_ID = "rcds/swiss_judgment_prediction"
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SHOWN_ERRORS = 5


class DataError(ValueError):
    """The data source is missing, unreadable or not in the SJP schema."""


class SjpCase(BaseModel):
    """The fields a case must have to be trained on; the others are kept as they are."""

    model_config = ConfigDict(extra="allow")

    text: str = Field(min_length=1)
    label: StrictInt

    @field_validator("label")
    @classmethod
    def _outcome(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError("must be 0 (dismissal) or 1 (approval)")
        return value


def load_cases(data: DataSpec, seed: int = 0) -> Dataset:
    """The cases a run trains on: filtered, without the held-out cases, subsampled as the
    spec says (``training.split`` holds the held-out side)."""
    from training.split import split_cases

    return split_cases(data, seed=seed).train


def source_rows(data: DataSpec, heldout: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Every checked row of the source (the hub's held-out split with ``heldout``), after
    the language filter; no subsampling, no split.

    Synthetic cases are generated with the run's ``seed``, as they always were, unless the
    spec holds cases out: then with ``split_seed``, so every seed sees the same cases.
    """
    if data.kind == "synthetic":
        rows = generate_cases(data.synthetic_size,
                              seed=data.split_seed if data.holds_out else seed)
    elif data.kind == "hub":
        split = data.heldout_split if heldout else data.split
        rows = _checked(_hub_rows(data, split or data.split), data.source)
    else:
        rows = _checked(_local_rows(Path(data.source)), data.source)
    what = f"{data.source} (split {data.heldout_split})" if heldout else data.source
    if not rows:
        raise DataError(f"data.source: {what} holds no cases")
    if data.languages:
        wanted = set(data.languages)
        rows = [row for row in rows if row.get("language") in wanted]
        if not rows:
            raise DataError(f"data.languages: no case in {what} is in {sorted(wanted)}")
    return rows


def to_dataset(rows: list[dict[str, Any]]) -> Dataset:
    return Dataset.from_list(_same_columns(rows))


def _hub_rows(data: DataSpec, split: str) -> Iterator[tuple[str, Any]]:
    from datasets import load_dataset

    hub_id = data.source.removeprefix("hub:")
    try:
        dataset = load_dataset(hub_id, name=data.hub_config, split=split)
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load"
        raise DataError(
            f"data.source: cannot load {hub_id!r} (split {split!r}) through the hub: "
            f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            " (machines without hub access need a local JSONL/Parquet copy)") from None
    for index, row in enumerate(dataset):
        yield f"{hub_id}[{index}]", row


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"data.source: {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in LOCAL_FORMATS)
        if not files:
            raise DataError(f"data.source: the folder {path} holds no .jsonl, .json or "
                            ".parquet files")
        return files
    if path.suffix not in LOCAL_FORMATS:
        raise DataError(f"data.source: {path} is neither .jsonl/.json nor .parquet")
    return [path]


def _local_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, raw row) for every row of a file or folder; unreadable rows as strings."""
    for file in _local_files(path):
        if file.suffix == ".parquet":
            yield from _parquet_rows(file)
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"data.source: {file} is not UTF-8 text") from None
        if file.suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"data.source: {file}:{error.lineno} is not JSON "
                                f"({error.msg})") from None
            for index, row in enumerate(rows):
                yield f"{file}[{index}]", row
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{file}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield f"{file}:{number}", f"not JSON ({error.msg})"


def _parquet_rows(file: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(file)
    except Exception as error:  # noqa: BLE001 - any reader error means "not Parquet"
        raise DataError(f"data.source: {file} is not a readable Parquet file "
                        f"({type(error).__name__})") from None
    for index, row in enumerate(table.to_pylist()):
        yield f"{file}[row {index}]", row


def _checked(rows: Iterable[tuple[str, Any]], source: str) -> list[dict[str, Any]]:
    """Every row validated; DataError listing the first bad ones and how many there are."""
    good: list[dict[str, Any]] = []
    bad: list[str] = []
    total = 0
    for where, raw in rows:
        total += 1
        if isinstance(raw, str):
            bad.append(f"{where}: {raw}")
            continue
        if not isinstance(raw, dict):
            bad.append(f"{where}: a case must be a JSON object, not {type(raw).__name__}")
            continue
        try:
            SjpCase.model_validate(raw)
        except ValidationError as error:
            bad.append(f"{where}: {'; '.join(describe_errors(error).splitlines())}")
            continue
        good.append(raw)
    if bad:
        shown = "\n  ".join(bad[:SHOWN_ERRORS])
        more = f"\n  ... and {len(bad) - SHOWN_ERRORS} more" if len(bad) > SHOWN_ERRORS else ""
        raise DataError(f"data.source: {len(bad)} of {total} rows in {source} are not SJP "
                        f"cases (text, label 0/1):\n  {shown}{more}")
    return good


def _same_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with one set of columns (missing optional fields as None), as Arrow needs."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [{column: row.get(column) for column in columns} for row in rows]
