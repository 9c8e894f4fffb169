"""Swiss Judgment Prediction cases from the hub, local files, or the synthetic generator.

All three sources end as one ``datasets.Dataset`` in the SJP schema (``id, year, text,
label, language, region, canton, legal area, source_language``), so formatting and
training never care where the cases came from.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, concatenate_datasets, load_dataset

from contracts.spec import DataSpec
from training.synthetic import generate_cases

SJP_HUB_ID = "rcds/swiss_judgment_prediction"
REQUIRED_COLUMNS = ("text", "label")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """The data source is missing, unreadable or not in the SJP schema."""


def load_cases(data: DataSpec, seed: int = 0) -> Dataset:
    """The cases a run trains on, filtered and subsampled as the spec says."""
    if data.kind == "synthetic":
        cases = Dataset.from_list(generate_cases(data.synthetic_size, seed=seed))
    elif data.kind == "hub":
        hub_id = data.source.removeprefix("hub:")
        cases = load_dataset(hub_id, name=data.hub_config, split=data.split)
    else:
        cases = _load_local(Path(data.source))
    _check_schema(cases, data.source)
    if data.languages:
        wanted = set(data.languages)
        cases = cases.filter(lambda row: row.get("language") in wanted)
        if len(cases) == 0:
            raise DataError(f"data.languages: no case in {data.source} is in {sorted(wanted)}")
    if data.max_samples and data.max_samples < len(cases):
        cases = cases.shuffle(seed=seed).select(range(data.max_samples))
    return cases


def _load_local(path: Path) -> Dataset:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_FORMATS)
    else:
        files = [path]
    if not files or not all(p.is_file() for p in files):
        raise DataError(f"data.source: {path} is not a JSONL/Parquet file or folder of them")
    parts = []
    for file in files:
        fmt = LOCAL_FORMATS.get(file.suffix)
        if fmt is None:
            raise DataError(f"data.source: {file} is neither .jsonl/.json nor .parquet")
        parts.append(load_dataset(fmt, data_files=str(file), split="train"))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _check_schema(cases: Dataset, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in cases.column_names]
    if missing:
        raise DataError(
            f"data.source: {source} lacks the SJP columns {missing} "
            f"(has {cases.column_names})"
        )
    labels = set(cases.unique("label"))
    if not labels <= {0, 1}:
        raise DataError(f"data.source: labels must be 0 (dismissal) or 1 (approval), got {labels}")
