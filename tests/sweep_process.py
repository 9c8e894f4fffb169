"""The environment of a sweep DAG run in its own process (tests/airflow_env/run_sweep.py):
its own Airflow metadata DB, the given MLflow store and cluster profiles, and nothing of
this test process's Airflow, MLflow or lora-regret settings."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_SWEEP = REPO / "tests" / "airflow_env" / "run_sweep.py"


def sweep_env(airflow_home: Path, mlflow_db: Path, artifacts: Path,
              clusters: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLFLOW", "LORA_REGRET", "VIRTUAL_ENV"))}
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{mlflow_db}",
        "LORA_REGRET_ARTIFACT_ROOT": str(artifacts),
        "LORA_REGRET_CLUSTERS_DIR": str(clusters),
        "LORA_REGRET_CACHE": os.environ.get("LORA_REGRET_CACHE", str(REPO / ".cache")),
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    })
    return env
