"""Which SJP cases a run trains on and which are held out for scoring, reproducibly.

- hub data sets: their own splits (``split`` trains, ``heldout_split`` is scored);
- local files and synthetic cases: a seeded split stratified by label (``heldout_fraction``
  of each outcome, drawn with ``split_seed``), so the imbalanced classes keep their
  proportions and every seed of a sweep is scored on the same cases.

A held-out case whose id or text also occurs among the training cases is dropped (the
SJP files hold duplicates), so no case used in training is ever scored. ``max_samples``
subsamples the training side only, with the run's seed. The split is recorded in the run
(``contracts.splits.SplitRecord``: the ids of both sides, label counts, a hash of the
held-out ids) and the evaluation job checks its held-out cases against that record.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from contracts.spec import DataSpec
from contracts.splits import SplitRecord, heldout_hash
from training.data import DataError, source_rows, to_dataset


def case_key(row: dict[str, Any]) -> str:
    """A case's identity: its SJP id, or a hash of its facts when it has none."""
    if row.get("id") is not None and str(row["id"]).strip():
        return str(row["id"])
    return "text:" + _text_hash(row)


def _text_hash(row: dict[str, Any]) -> str:
    text = " ".join(str(row.get("text", "")).split())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SjpSplit:
    train: Dataset
    heldout: Dataset | None
    record: SplitRecord


def _stratified(rows: list[dict[str, Any]], fraction: float, seed: int
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out): ``fraction`` of each label, at least one case of each label on
    each side where the label has two or more cases. Copies of the same facts move
    together (the SJP sample holds 16 texts twice under different ids), and rows are
    ordered by their key before shuffling, so the file's row order does not matter."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_text_hash(row), []).append(row)
    rng = random.Random(seed)
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    for label in sorted({int(row["label"]) for row in rows}):
        mine = sorted((g for g in groups.values() if int(g[0]["label"]) == label),
                      key=lambda g: min(case_key(row) for row in g))
        rng.shuffle(mine)
        n = round(fraction * len(mine))
        if len(mine) >= 2:
            n = min(max(n, 1), len(mine) - 1)
        heldout += [row for group in mine[:n] for row in group]
        train += [row for group in mine[n:] for row in group]
    rng.shuffle(heldout)  # a capped prefix keeps both labels
    return train, heldout


def _without_overlap(train: list[dict[str, Any]], heldout: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], int]:
    """Held-out rows that are neither training cases (by id or by text) nor repeats."""
    keys = {case_key(row) for row in train}
    texts = {_text_hash(row) for row in train}
    kept = []
    for row in heldout:
        key, text = case_key(row), _text_hash(row)
        if key not in keys and text not in texts:
            kept.append(row)
            keys.add(key)
            texts.add(text)
    return kept, len(heldout) - len(kept)


def _labels(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(str(int(row["label"])) for row in rows)
    return dict(sorted(counts.items()))


def split_cases(data: DataSpec, seed: int = 0) -> SjpSplit:
    """The training cases (subsampled with ``seed``) and the held-out ones (None when the
    spec holds nothing out), with the record the run keeps."""
    rows = source_rows(data, seed=seed)
    heldout: list[dict[str, Any]] = []
    method = "none"
    if data.heldout_split is not None:
        method = "hub_splits"
        heldout = source_rows(data, heldout=True)
    elif data.heldout_fraction is not None:
        method = "stratified"
        rows, heldout = _stratified(rows, data.heldout_fraction, data.split_seed)
    dropped = 0
    if data.holds_out:
        heldout, dropped = _without_overlap(rows, heldout)
        if not heldout:
            raise DataError(f"data.heldout_fraction: no case of {data.source} is left to "
                            "hold out (too few cases, or every one also occurs in training)")
    train = to_dataset(rows)
    if data.max_samples and data.max_samples < len(train):
        train = train.shuffle(seed=seed).select(range(data.max_samples))
    train_ids = [case_key(row) for row in train]
    heldout_ids = [case_key(row) for row in heldout]
    record = SplitRecord(
        data=data.model_dump(mode="json"), method=method,
        split_hash=heldout_hash(heldout_ids) if heldout else "",
        n_train=len(train), n_heldout=len(heldout), train_labels=_labels(list(train)),
        heldout_labels=_labels(heldout), dropped_overlap=dropped, train_ids=train_ids,
        heldout_ids=heldout_ids)
    return SjpSplit(train=train, heldout=to_dataset(heldout) if heldout else None,
                    record=record)


def heldout_cases(record: SplitRecord, max_cases: int | None = None) -> list[dict[str, Any]]:
    """The held-out cases of a recorded split, rebuilt from its data spec and checked
    against the record: every case must be one the record held out, none one it trained
    on. The first ``max_cases`` (the split's order is already shuffled)."""
    data = DataSpec.model_validate(record.data)
    if not data.holds_out:
        raise DataError("data: this run held no cases out (data.heldout_fraction or "
                        "data.heldout_split); it cannot be scored on held-out cases")
    rebuilt = split_cases(data).heldout
    rows = list(rebuilt) if rebuilt is not None else []
    wanted = set(record.heldout_ids)
    trained = set(record.train_ids)
    rows = [row for row in rows if case_key(row) in wanted]
    leaked = [case_key(row) for row in rows if case_key(row) in trained]
    if leaked or len(rows) != len(wanted):
        raise DataError(f"data: the held-out cases of {data.source} no longer match the run's "
                        f"recorded split ({len(rows)} of {len(wanted)} found, {len(leaked)} "
                        "among the training cases); was the data changed?")
    return rows[:max_cases] if max_cases else rows
