"""Shared fixtures: real services in temporary places, never the user's own state.

Airflow reads its configuration from the environment when first imported, so the
temporary AIRFLOW_HOME is set here, at collection time, before any test imports it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["slurm_fixtures"]  # local SLURM cluster + sshd (tests/slurm_fixtures.py)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lora-regret-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
)
# Jobs started by tests must never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip when this checkout has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@contextlib.contextmanager
def mlflow_store(folder: Path) -> Iterator[str]:
    """Point MLflow (tracking, registry, artifacts) at a fresh SQLite store in ``folder``."""
    import mlflow

    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        patch.setenv("LORA_REGRET_ARTIFACT_ROOT", str(folder / "artifacts"))
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield uri
        finally:
            # MLflow keeps these process-wide: a later test's client must not find this store.
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> Iterator[str]:
    """A real MLflow store (SQLite + local artifacts) private to one test."""
    with mlflow_store(tmp_path) as uri:
        yield uri


@pytest.fixture(scope="module")
def module_mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow store shared by the tests of one module (train once, check often)."""
    with mlflow_store(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (SQLite) for DagBag and dag.test()."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME
