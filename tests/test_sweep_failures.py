"""A sweep survives its own failures (real Airflow dag.test, local jobs, real MLflow).

Of three tiny-apertus runs, one trains for real, one exits with the out-of-memory code
and one crashes: the finished run is still evaluated on LEXam, the sweep-results asset
event carries the counts, the DagRun ends failed (a crash is not a recorded outcome), and
the report DAG writes a report naming the two runs that did not finish.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from contracts.conf import parse_conf, plan_runs

REPO_ROOT = Path(__file__).resolve().parent.parent

# A stand-in for the cluster's python: the LoRA rank-4 run dies of OOM the way the
# training job reports it (exit 4), rank 8 crashes (exit 1); everything else runs.
STAND_IN = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "training" ]; then
  if grep -q '^rank: 4$' "$4"; then
    echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2; exit 4
  fi
  if grep -q '^rank: 8$' "$4"; then
    echo "RuntimeError: the dataloader worker died" >&2; exit 1
  fi
fi
exec {python} "$@"
"""


@pytest.fixture
def failing_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> Path:
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    python = tmp_path / "python"
    python.write_text(STAND_IN.format(python=sys.executable))
    python.chmod(0o755)
    local = yaml.safe_load((REPO_ROOT / "configs" / "clusters" / "local.yaml").read_text())
    local.update(work_dir=str(tmp_path / "jobs"), outputs_dir=str(tmp_path / "runs"),
                 poll_interval=0.5, python=str(python))
    (clusters / "local.yaml").write_text(yaml.safe_dump(local))
    monkeypatch.setenv("LORA_REGRET_CLUSTERS_DIR", str(clusters))
    monkeypatch.setenv("LORA_REGRET_REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    assert bag.import_errors == {}
    return bag.get_dag(dag_id)


def states(dag_run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: t.map_index):
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


@pytest.mark.airflow
@pytest.mark.slow
def test_oom_and_failed_runs_do_not_stop_evaluation_event_or_report(
        airflow_db: Path, failing_env: Path, mlflow_uri: str) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from mlflow.tracking import MlflowClient

    conf = {"sweep": "tiny", "learning_rates": [1e-3], "ranks": [2, 4, 8], "max_steps": 2,
            "eval_data": "synthetic", "eval_max_questions": 2}
    sweep_id = parse_conf(conf).derived_sweep_id()
    specs = {s.rank: s for s in plan_runs(parse_conf(conf))}
    run = load_dag("lora_regret_sweep").test(run_conf=conf)

    got = states(run)
    assert got["train"] == ["success", "failed", "failed"], got  # map order: ranks 2, 4, 8
    assert got["evaluate"] == ["success"] and got["record"] == ["success"]
    assert got["publish"] == ["success"]
    assert got["verdict"] == ["failed"] and run.state == "failed"  # the crash is a failure

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("lora-regret").experiment_id
    by_rank = {r.data.tags["rank"]: r for r in client.search_runs(
        [experiment], f"tags.sweep_id = '{sweep_id}' and tags.method = 'lora'")}
    assert by_rank["2"].data.tags["outcome"] == "finished"
    assert by_rank["2"].data.metrics["lexam/n_questions"] == 2  # evaluated all the same
    assert by_rank["4"].data.tags["outcome"] == "oom"
    assert by_rank["8"].data.tags["outcome"] == "failed"
    assert "dataloader worker died" in by_rank["8"].data.tags["failure_reason"]

    with create_session() as session:
        extras = [e.extra for e in session.query(AssetEvent).all()
                  if e.source_run_id == run.run_id]
    assert extras == [{"sweep_id": sweep_id,
                       "runs": {"finished": 1, "diverged": 0, "oom": 1, "failed": 1}}]

    # The evaluation job started only when its model's three training jobs had ended.
    jobs = failing_env / "jobs"
    ended = max((d / "result.json").stat().st_mtime for d in jobs.glob("lr-tiny-*"))
    assert next(jobs.glob("lr-eval-*")).joinpath("started").stat().st_mtime >= ended

    report = load_dag("lora_regret_report").test(run_conf={"sweep_id": sweep_id})
    assert report.state == "success", states(report)
    text = (failing_env / "reports" / sweep_id / "report.md").read_text()
    section = text.split("## Runs that did not finish")[1].split("\n## ")[0]
    assert "2 of 3 runs did not finish (1 failed, 1 oom)" in section
    assert specs[4].run_name in section and "OOM" in section
    assert specs[8].run_name in section and "dataloader worker died" in section
    assert specs[2].run_name not in section
