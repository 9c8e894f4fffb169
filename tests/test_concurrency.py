"""Concurrent first use: processes that meet a brand-new MLflow store at the same moment
(two trainings of a sweep starting together) all work; only one creates the schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = ["--model", "tiny-apertus", "--method", "lora", "--rank", "2", "--max-steps", "1",
         "--batch", "2", "--grad-accum", "1", "--max-seq-length", "256", "--data", "synthetic"]


def test_concurrent_clients_of_a_new_store_all_work(tmp_path: Path) -> None:
    """Six processes configure the same new SQLite store at once and each logs a run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = ("import sys, mlflow; from tracking.store import configure, ensure_experiment\n"
            "from mlflow.tracking import MlflowClient\n"
            "configure(sys.argv[1]); c = MlflowClient()\n"
            "c.create_run(ensure_experiment(c, 'concurrent'))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(errors)[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("concurrent")
    assert len(client.search_runs([experiment.experiment_id])) == 6


@pytest.mark.slow
def test_two_trainings_start_together_on_a_new_store(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "LORA_REGRET_ARTIFACT_ROOT": str(tmp_path / "artifacts")}
    env.pop("MLFLOW_REGISTRY_URI", None)
    procs = [subprocess.Popen([sys.executable, "-m", "training", *TRAIN, "--lr", lr,
                               "--output-dir", str(tmp_path / "runs"), "--no-register"],
                              env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
             for lr in ("1e-3", "2e-3")]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("lora-regret").experiment_id])
    assert sorted(r.data.tags["outcome"] for r in runs) == ["finished", "finished"]
