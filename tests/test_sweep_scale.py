"""A sweep larger than Airflow's max_map_length (1024) on the local SLURM cluster.

1,100 runs of sleep jobs: the real DAG plans and submits them all (one SSH session) and
maps one ``train`` task per run through its concatenated parts; the sensing of all 1,100
jobs then runs as one triggerer runs it, every trigger in one event loop, over one
connection. The ``train`` instances themselves are marked successful by ``dag.test()``
(it would run 1,100 triggers one after another); the benchmark runs the whole thing in a
real Airflow (benchmarks/fanout_slurm.py).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml
from cluster_jobs.poller import ClusterPoller
from cluster_jobs.trigger import ClusterJobTrigger
from trigger_helpers import sense_all

from contracts.conf import parse_conf, plan_runs
from contracts.profiles import ClusterProfile

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = 1100
CONF = {"sweep": "tiny", "seeds": list(range(RUNS // 4)), "evaluate": False,
        "cluster": "slurm-scale"}


@pytest.mark.slurm
@pytest.mark.airflow
@pytest.mark.slow
def test_sweep_above_max_map_length_submits_maps_and_senses_every_run(
        slurm_profile: ClusterProfile, airflow_db: Path, mlflow_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    assert len(plan_runs(parse_conf(CONF))) == RUNS
    sleeper = tmp_path / "python"
    sleeper.write_text("#!/bin/bash\nsleep 1\n")
    sleeper.chmod(0o755)
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    profile = {**slurm_profile.model_dump(mode="json"), "python": str(sleeper),
               "chdir": None, "poll_interval": 2}
    profile.pop("name")
    (clusters / "slurm-scale.yaml").write_text(yaml.safe_dump(profile))
    shutil.copy(REPO_ROOT / "configs" / "clusters" / "local.yaml", clusters / "local.yaml")
    monkeypatch.setenv("LORA_REGRET_CLUSTERS_DIR", str(clusters))

    bag = DagBag()
    assert bag.import_errors == {}
    run = bag.get_dag("lora_regret_sweep").test(
        run_conf=CONF, mark_success_pattern="train|record|publish|verdict")
    train = [ti for ti in run.get_task_instances() if ti.task_id == "train"]
    assert len(train) == RUNS and {str(ti.state) for ti in train} == {"success"}
    parts = {ti.task_id: str(ti.state) for ti in run.get_task_instances()
             if ti.task_id.startswith("train_runs_")}
    assert parts == {f"train_runs_{k}": "success" for k in range(1, 5)}

    folders = sorted(p for p in Path(slurm_profile.work_dir).iterdir()
                     if p.is_dir() and not p.name.startswith("."))  # .claims is not a job
    assert len(folders) == RUNS  # one job each, none twice
    jobs = {p.name: (p / "job_id").read_text().strip() for p in folders}
    scale = ClusterProfile.model_validate({**profile, "name": "slurm-scale"})
    before = dataclasses.asdict(ClusterPoller.total(str(scale.ssh_conn_id)))
    events = sense_all([ClusterJobTrigger(profile=scale.model_dump(), job_id=job_id, key=key)
                        for key, job_id in jobs.items()], timeout=1200)
    assert {e["status"]["state"] for e in events} == {"COMPLETED"}
    used = {k: v - before[k]
            for k, v in dataclasses.asdict(ClusterPoller.total(str(scale.ssh_conn_id))).items()}
    assert used["connections_opened"] == 1 and used["jobs_sensed"] == RUNS
    assert used["scheduler_queries"] == used["polls"]  # one squeue per poll for all 1,100
