"""The control plane in the environment it ships in: the airflow extra only (as in
docker/airflow.Dockerfile), the project installed normally (not editable), no ML stack.

The checkout is installed into ``.venv-airflow`` (made by scripts/bootstrap-env.sh), then
the DagBag is imported and a tiny sweep is run with ``dag.test()`` there, from a folder
outside the checkout, so configs come from the installed package data. Its jobs run in the
training environment (``.venv``), named by the cluster profile, as on a cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sweep_process import RUN_SWEEP, sweep_env

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_VENV = REPO / ".venv-airflow"


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    python = AIRFLOW_VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{AIRFLOW_VENV} is missing: scripts/bootstrap-env.sh creates it")
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), "--no-deps",
                    "--reinstall-package", "lora-regret", str(REPO)], check=True, cwd=REPO)
    return python


@pytest.mark.airflow
@pytest.mark.slow
def test_tiny_sweep_runs_where_only_airflow_is_installed(airflow_python: Path,
                                                         tmp_path: Path) -> None:
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    local = yaml.safe_load((REPO / "configs" / "clusters" / "local.yaml").read_text())
    local.update(work_dir=str(tmp_path / "jobs"), outputs_dir=str(tmp_path / "runs"),
                 poll_interval=0.5, python=sys.executable)  # jobs: the training env
    (clusters / "local.yaml").write_text(yaml.safe_dump(local))
    env = sweep_env(tmp_path / "airflow", tmp_path / "mlflow.db", tmp_path / "artifacts",
                    clusters)
    conf = {"sweep": "tiny", "learning_rates": [1e-3], "ranks": [2], "max_steps": 2,
            "eval_data": "synthetic", "eval_max_questions": 2, "eval_max_new_tokens": 4}
    done = subprocess.run(
        [str(airflow_python), str(RUN_SWEEP),
         json.dumps(conf)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["missing"] == ["torch", "transformers", "peft", "trl"]
    assert found["import_errors"] == {}
    assert found["dag_ids"] == ["lexam_nightly", "lora_regret_report", "lora_regret_sweep"]
    # A normal install: the package lives in the environment, configs in its share/ folder.
    assert str(AIRFLOW_VENV) in found["contracts_file"]
    assert found["configs_dir"].endswith("share/lora-regret/configs")
    assert found["state"] == "success", found["states"]
    assert found["states"]["train"] == ["success"] and found["states"]["evaluate"] == ["success"]
    trained = [r for r in found["runs"] if r["method"] == "lora"]
    assert [(r["outcome"], r["lexam_n"]) for r in trained] == [("finished", 2.0)]
