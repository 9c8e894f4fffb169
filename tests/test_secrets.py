"""Secrets stay out of jobs and logs: canary values planted in the submitting side's
environment reach a job only when the profile passes them, never a file others can read,
and never the log tail that Airflow shows (credentials in URLs are redacted)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from cluster_jobs.local import LocalJobs
from cluster_jobs.slurm import SlurmJobs
from cluster_jobs.trigger import ClusterJobTrigger
from trigger_helpers import sense

from contracts.jobs import JobRequest
from contracts.profiles import ClusterProfile

PASSED = "canary-passed-4b1f"
NOT_PASSED = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:canary-db-9c2e@db/airflow",
    "AIRFLOW_CONN_CLUSTER": '{"conn_type": "ssh", "password": "canary-conn-71aa"}',
    "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-03d5",
}
TOKENS = ("canary-db-9c2e", "canary-conn-71aa", "canary-mlflow-03d5")
# The job prints its whole environment, then fails, so its log tail travels to Airflow.
PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ))); raise SystemExit(5)"


def environ() -> dict[str, str]:
    return {**os.environ, **NOT_PASSED,
            "MLFLOW_TRACKING_URI": f"http://lora:{PASSED}@127.0.0.1:5000"}


def canaries_in(root: Path) -> dict[str, list[tuple[str, bool]]]:
    """canary -> [(file, readable by others?)] for every file under ``root``."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        others = bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
        for canary in (PASSED, *TOKENS):
            if canary in text:
                found.setdefault(canary, []).append((str(path.relative_to(root)), others))
    return found


def check(event: dict, work_dir: Path, job_env: dict[str, str]) -> None:
    assert event["status"]["exit_code"] == 5, event
    # The job has what the profile passes, and nothing else of the submitting side's.
    assert PASSED in job_env["MLFLOW_TRACKING_URI"]
    assert not set(NOT_PASSED) & set(job_env)
    # Files: the passed secret only where the owner alone can read it; no other canary.
    found = canaries_in(work_dir)
    assert set(found) <= {PASSED}, found
    assert all(not others for _, others in found.get(PASSED, [])), found
    assert not any(name.endswith(".sh") for name, _ in found.get(PASSED, [])), found
    # What Airflow shows of the log: the URL's credentials redacted.
    assert "***@127.0.0.1" in event["log_tail"] and PASSED not in event["log_tail"]


def _job_env(log: Path) -> dict[str, str]:
    return json.loads(next(line for line in log.read_text().splitlines()
                           if line.startswith("{")))


def test_a_local_job_gets_only_what_the_profile_passes(tmp_path: Path) -> None:
    profile = ClusterProfile(name="local-secrets", backend="local",
                             work_dir=str(tmp_path / "jobs"), poll_interval=0.2,
                             pass_env=("MLFLOW_TRACKING_URI",), resources={"time_limit": "10"})
    request = JobRequest(name="canary", key="canary", argv=(sys.executable, "-c", PRINT_ENV))
    job_id, _ = LocalJobs(profile).submit(request, environ())
    event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id,
                                    key=request.key))
    check(event, tmp_path / "jobs", _job_env(tmp_path / "jobs" / "canary" / "job.log"))


@pytest.mark.slurm
def test_a_slurm_job_gets_only_what_the_profile_passes(slurm_profile: ClusterProfile) -> None:
    profile = slurm_profile.model_copy(update={"chdir": None,
                                               "pass_env": ("MLFLOW_TRACKING_URI",)})
    request = JobRequest(name="canary", key="canary", argv=("python3", "-c", PRINT_ENV))
    job_id, _ = SlurmJobs(profile).submit(request, environ())
    event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id,
                                    key=request.key))
    work_dir = Path(profile.work_dir)
    job_env = _job_env(work_dir / "canary" / "job.log")
    # sbatch exports the login shell's own environment too (not Airflow's): only the
    # Airflow-side canaries matter here.
    check(event, work_dir, job_env)
