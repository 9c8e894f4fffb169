"""The MLflow store: which one, created safely on first use, experiments.

A new SQLite store has its schema created by the first client that opens it; two
processes doing that at once crash in MLflow's migration ("table ... already exists").
``configure`` opens a SQLite store under a file lock first, so concurrent first use works.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from contracts.paths import default_tracking_uri

ARTIFACT_ROOT_ENV = "LORA_REGRET_ARTIFACT_ROOT"
SQLITE_PREFIX = "sqlite:///"


def configure(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default: MLFLOW_TRACKING_URI or the project's SQLite store);
    a SQLite store is created, schema included, under a lock."""
    import mlflow

    uri = uri or default_tracking_uri()
    if uri.startswith(SQLITE_PREFIX):
        _open_sqlite_once(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def client(uri: str | None = None) -> Any:
    """An MlflowClient on the configured store (a new SQLite store created safely first)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=configure(uri))


def _open_sqlite_once(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    path = Path(uri.removeprefix(SQLITE_PREFIX))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the schema


def _artifact_root(client: Any) -> str | None:
    """$LORA_REGRET_ARTIFACT_ROOT, else beside a SQLite store (MLflow would otherwise use
    ./mlruns of whatever the job's working folder is); a tracking server decides itself."""
    if os.environ.get(ARTIFACT_ROOT_ENV):
        return os.environ[ARTIFACT_ROOT_ENV]
    uri = str(getattr(client, "tracking_uri", "") or "")
    if uri.startswith(SQLITE_PREFIX):
        return str(Path(uri.removeprefix(SQLITE_PREFIX)).parent / "mlartifacts")
    return None


def ensure_experiment(client: Any, name: str) -> str:
    """The experiment's id, created on first use (also when another job creates it now)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = _artifact_root(client)
    location = Path(root, name).resolve().as_uri() if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
