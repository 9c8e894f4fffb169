"""A local cache of metric histories, one Parquet file per run and version.

A finished run's history never changes, and a sweep is re-reported every time new
results land, so only runs that are new or have changed since the last report are read
from MLflow. A run's version is a fingerprint of what changes when it logs anything
(status, end time, outcome, last step and time of each history key; see
``fetch.run_fingerprint``); it is hashed into the file name, so a stale entry is simply
never found, and writes are atomic renames: parallel report tasks can share the folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from reporting.history import HISTORY_COLUMNS, empty_history


class HistoryCache:
    """Histories keyed by (run id, fingerprint) under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, run_id: str, fingerprint: str) -> Path:
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        return self.folder / f"{run_id}.{digest}.parquet"

    def load(self, fingerprints: Mapping[str, str]) -> tuple[pd.DataFrame, list[str]]:
        """The cached histories of the runs whose fingerprint matches, and the other runs."""
        frames, missing = [], []
        for run_id, fingerprint in fingerprints.items():
            path = self._path(run_id, fingerprint)
            try:
                frames.append(pd.read_parquet(path))
            except (FileNotFoundError, OSError, ValueError):
                missing.append(run_id)
        cached = pd.concat(frames, ignore_index=True) if frames else empty_history()
        return cached[HISTORY_COLUMNS], missing

    def save(self, history: pd.DataFrame, fingerprints: Mapping[str, str]) -> None:
        """Store each run's history under its fingerprint, dropping its older versions."""
        self.folder.mkdir(parents=True, exist_ok=True)
        groups = dict(tuple(history.groupby("run_id", sort=False)))
        for run_id, fingerprint in fingerprints.items():
            frame = groups.get(run_id, empty_history())
            path = self._path(run_id, fingerprint)
            for stale in self.folder.glob(f"{run_id}.*.parquet"):
                if stale != path:
                    stale.unlink(missing_ok=True)
            handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            os.close(handle)
            frame[HISTORY_COLUMNS].to_parquet(tmp, index=False)
            os.replace(tmp, path)
