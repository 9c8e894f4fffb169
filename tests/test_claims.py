"""One spec trains once: a claim on the spec hash, taken atomically when its job is
submitted, makes concurrent triggers, retries and cleared tasks share the job that holds
it instead of starting another. Batch level on the local backend (real processes), then
the whole sweep DAG triggered twice at the same moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from cluster_jobs.batch import submit_jobs
from cluster_jobs.local import LocalJobs
from sweep_process import RUN_SWEEP, sweep_env

from contracts.jobs import JobRequest
from contracts.profiles import ClusterProfile

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def jobs(tmp_path: Path) -> LocalJobs:
    return LocalJobs(ClusterProfile(name="local-claims", backend="local",
                                    work_dir=str(tmp_path / "jobs"), poll_interval=0.2,
                                    resources={"time_limit": "10"}))


def job(key: str, code: str = "import time; time.sleep(2)",
        claim: str = "spec-abc") -> JobRequest:
    return JobRequest(name="train", key=key, claim=claim, argv=("python3", "-c", code))


def wait(jobs: LocalJobs, key: str) -> str:
    deadline = time.monotonic() + 60
    while not (state := jobs.status(key).state).finished:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return state.value


def started(jobs: LocalJobs) -> list[str]:
    return sorted(p.name for p in jobs.work_dir.iterdir()
                  if not p.name.startswith(".") and (p / "job_id").is_file())


def at_once(submit) -> tuple:
    """``submit(key, barrier)`` for two keys in two threads that pass the barrier together;
    the one submission result of each."""
    results: dict[str, list] = {}
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, submit(k, barrier)))
               for k in ("run-a", "run-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (a,), (b,) = results["run-a"], results["run-b"]
    return a, b


def test_two_triggers_at_once_share_one_job(jobs: LocalJobs) -> None:
    def submit(key: str, barrier: threading.Barrier) -> list:
        barrier.wait()
        return submit_jobs(jobs, [job(key)], os.environ)

    a, b = at_once(submit)
    assert a.job_id == b.job_id and a.key == b.key  # one job, sensed by both
    assert {a.result, b.result} == {"submitted", "existing"}
    assert len(started(jobs)) == 1
    assert wait(jobs, a.key) == "COMPLETED"


def test_a_finished_claim_is_shared_a_failed_one_taken_over(jobs: LocalJobs) -> None:
    (first,) = submit_jobs(jobs, [job("first", "raise SystemExit(1)")], os.environ)
    assert wait(jobs, "first") == "FAILED"
    (second,) = submit_jobs(jobs, [job("second", "print('ok')")], os.environ)
    assert second.key == "second" and second.result == "submitted"  # taken over, trained
    assert wait(jobs, "second") == "COMPLETED"
    (third,) = submit_jobs(jobs, [job("third")], os.environ)
    assert (third.key, third.job_id, third.result) == ("second", "second", "existing")
    # Forced: a finished claim is taken over (a running one would still be shared).
    (forced,) = submit_jobs(jobs, [job("forced", "print('again')")], os.environ,
                            take_finished_claims=True)
    assert forced.key == "forced" and forced.result == "submitted"
    assert started(jobs) == ["first", "forced", "second"]


@pytest.mark.airflow
@pytest.mark.slow
def test_the_same_conf_triggered_twice_at_once_trains_once(tmp_path: Path) -> None:
    """Two schedulers' worth of the sweep DAG (two processes, each its own Airflow
    metadata DB) run the same conf at the same moment on one MLflow store and one cluster:
    one finished run, one registered version, one training job."""
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    local = yaml.safe_load((REPO / "configs" / "clusters" / "local.yaml").read_text())
    local.update(work_dir=str(tmp_path / "jobs"), outputs_dir=str(tmp_path / "runs"),
                 poll_interval=0.5, max_parallel_jobs=2)
    (clusters / "local.yaml").write_text(yaml.safe_dump(local))
    mlflow_db = tmp_path / "mlflow.db"
    conf = {"sweep": "tiny", "learning_rates": [1e-3], "ranks": [2], "max_steps": 2,
            "evaluate": False}

    def start(name: str) -> subprocess.Popen:
        env = sweep_env(tmp_path / f"airflow-{name}", mlflow_db, tmp_path / "artifacts",
                        clusters)
        return subprocess.Popen(
            [sys.executable, str(RUN_SWEEP),
             json.dumps(conf)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)

    procs = [start("a"), start("b")]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    found = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [f["state"] for f in found] == ["success", "success"], found
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}", registry_uri=f"sqlite:///{mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name("lora-regret").experiment_id])
    assert [r.data.tags["outcome"] for r in runs] == ["finished"]
    assert len(client.search_model_versions("name = 'lora-regret-tiny-apertus-lora'")) == 1
    trained = [p for p in (tmp_path / "jobs").iterdir()
               if not p.name.startswith(".") and (p / "job_id").is_file()]
    assert len(trained) == 1, trained


@pytest.mark.slurm
def test_two_triggers_at_once_share_one_slurm_job(slurm_profile: ClusterProfile) -> None:
    from cluster_jobs.slurm import SlurmJobs

    profile = slurm_profile.model_copy(update={"chdir": None})

    def submit(key: str, barrier: threading.Barrier) -> list:
        with SlurmJobs(profile) as session:
            barrier.wait()
            return submit_jobs(session, [job(key, claim="spec-slurm")], os.environ)

    a, b = at_once(submit)
    assert a.job_id == b.job_id and a.key == b.key, (a, b)
    assert {a.result, b.result} == {"submitted", "existing"}
    folders = [p for p in Path(profile.work_dir).iterdir()
               if not p.name.startswith(".") and (p / "job_id").is_file()]
    assert len(folders) == 1
