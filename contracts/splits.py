"""The record of which SJP cases a run trained on and which it held out.

Written by the training job into its MLflow run (artifact ``data/split.json``), read by the
evaluation job, which rebuilds the held-out cases and checks them against it: no case a
run trained on is ever scored for it. ``split_hash`` names the held-out set, so runs (and
the base model) are only compared on the same cases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SplitMethod = Literal["hub_splits", "stratified", "none"]


def heldout_hash(keys: Iterable[str]) -> str:
    """Short, order-free identity of a held-out set."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:12]


class SplitRecord(BaseModel):
    """One run's split: its data spec, the case ids on each side, label counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: dict[str, Any]
    method: SplitMethod
    split_hash: str
    n_train: int
    n_heldout: int
    train_labels: dict[str, int]
    heldout_labels: dict[str, int]
    dropped_overlap: int
    train_ids: list[str]
    heldout_ids: list[str]

    @property
    def majority_label(self) -> int:
        """The most common training outcome (a tie goes to dismissal, SJP's majority)."""
        counts = {int(k): v for k, v in self.train_labels.items()}
        return max((0, 1), key=lambda label: (counts.get(label, 0), label == 0))
