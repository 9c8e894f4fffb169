"""A run's SJP split in MLflow: written by the training job, read by evaluation.

The record (``contracts.splits.SplitRecord``) is the artifact ``data/split.json``; the tag
``sjp_split_hash`` and the metrics ``data/n_train`` and ``data/n_heldout`` make it visible
in the MLflow UI and searchable without downloading anything.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from contracts.names import SPLIT_ARTIFACT, TAG_SPLIT_HASH
from contracts.splits import SplitRecord


def log_split(client: Any, run_id: str, record: SplitRecord) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("data/n_train", float(record.n_train), now, 0),
                                      Metric("data/n_heldout", float(record.n_heldout), now, 0)],
                     tags=[RunTag(TAG_SPLIT_HASH, record.split_hash),
                           RunTag("sjp_split_method", record.method)])
    client.log_text(run_id, record.model_dump_json(), SPLIT_ARTIFACT)


def read_split(client: Any, run_id: str) -> SplitRecord | None:
    """The run's recorded split, or None for a run that recorded none (older runs)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="lora-regret-split-") as folder:
        try:
            local = client.download_artifacts(run_id, SPLIT_ARTIFACT, folder)
        except (MlflowException, OSError):
            return None
        return SplitRecord.model_validate(json.loads(Path(local).read_text()))
