"""`make demo`'s script end to end on the tiny model: real MLflow server, real Airflow
standalone driven through its REST API, local jobs. Slow: minutes on two cores."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.airflow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_runs_the_sweep_through_airflow_and_mlflow(repo_root: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLFLOW", "LORA_REGRET_ARTIFACT"))},
        "LORA_REGRET_STATE": str(state),
        "MLFLOW_PORT": str(free_port()),
        "AIRFLOW_PORT": str(free_port()),
        "DEMO_SWEEP": "tiny",
        "DEMO_MODEL": "tiny-apertus",
        "DEMO_MAX_STEPS": "6",
        "DEMO_EVAL_QUESTIONS": "4",
        "DEMO_EVAL_MAX_NEW_TOKENS": "8",
        "DEMO_TIMEOUT_S": "1500",
        "AIRFLOW_PARALLELISM": "4",
    }
    try:
        result = subprocess.run(["bash", "scripts/demo.sh"], cwd=repo_root, env=env,
                                capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert "lora_regret_sweep success" in result.stdout
        assert "Airflow UI" in result.stdout and "MLflow UI" in result.stdout

        # The MLflow server answers its REST API with the sweep's finished runs.
        mlflow = f"http://127.0.0.1:{env['MLFLOW_PORT']}/api/2.0/mlflow"
        experiment = httpx.get(f"{mlflow}/experiments/get-by-name",
                               params={"experiment_name": "lora-regret"}).json()["experiment"]
        runs = httpx.post(f"{mlflow}/runs/search", json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "tags.outcome = 'finished' and tags.method = 'lora'"}).json()["runs"]
        assert len(runs) == 4
        for run in runs:
            metrics = {m["key"] for m in run["data"]["metrics"]}
            assert {"train/final_loss", "lexam/accuracy", "lexam/loglik_accuracy"} <= metrics
        models = httpx.get(f"{mlflow}/registered-models/search").json()["registered_models"]
        assert any(m["name"] == "lora-regret-tiny-apertus-lora" for m in models)
        reports = list((state / "reports").rglob("report.html"))
        assert reports and reports[0].stat().st_size > 10_000
    finally:
        subprocess.run(["bash", "scripts/demo-down.sh"], cwd=repo_root, env=env, check=False)
