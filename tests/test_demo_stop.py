"""Stopping the demo cleanly, tested without running it: `make down` (scripts/demo-down.sh)
ends the local jobs the demo left running, and a demo that times out says which tasks
still run and how to follow or stop them (scripts/demo_driver.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cluster_jobs.local import LocalJobs

from contracts.jobs import JobRequest
from contracts.profiles import load_profile

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def local_clusters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The `local` profile, its job folders private to the test."""
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    local = yaml.safe_load((REPO_ROOT / "configs" / "clusters" / "local.yaml").read_text())
    local.update(work_dir=str(tmp_path / "jobs"), poll_interval=0.2)
    (clusters / "local.yaml").write_text(yaml.safe_dump(local))
    monkeypatch.setenv("LORA_REGRET_CLUSTERS_DIR", str(clusters))
    return clusters


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def _start(jobs: LocalJobs, name: str) -> int:
    """A job that runs (or waits for the slot) with a child process; returns its runner."""
    script = 'sleep 300 & echo $! > "$JOB_DIR"/inner.pid; wait'  # the profile's chdir: "."
    jobs.submit(JobRequest(name=name, key=name, argv=("bash", "-c", script)), os.environ)
    return int((jobs.job_dir(name) / "runner.pid").read_text())


def test_make_down_ends_the_local_jobs_the_demo_left_running(local_clusters: Path,
                                                             tmp_path: Path) -> None:
    jobs = LocalJobs(load_profile("local"))
    runners = [_start(jobs, "first"), _start(jobs, "second")]  # one slot: one waits
    pid_files = [jobs.job_dir(k) / "inner.pid" for k in ("first", "second")]
    deadline = time.monotonic() + 60
    while not any(p.is_file() and p.read_text().strip() for p in pid_files):
        assert time.monotonic() < deadline, "no job started"
        time.sleep(0.1)
    child = next(int(p.read_text()) for p in pid_files if p.is_file() and p.read_text().strip())
    assert sorted(jobs.running_jobs()) == ["first", "second"]

    env = {**os.environ, "LORA_REGRET_STATE": str(tmp_path / "state")}  # no services
    down = subprocess.run(["bash", "scripts/demo-down.sh"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    assert "stopped: " in down.stdout and "first" in down.stdout and "second" in down.stdout
    assert jobs.running_jobs() == []
    assert {jobs.status(k).state.value for k in ("first", "second")} == {"CANCELLED"}
    assert not any(_alive(pid) for pid in [*runners, child])
    again = subprocess.run([sys.executable, "-m", "cluster_jobs.local", "stop", "local"],
                           capture_output=True, text=True, check=True)
    assert "no local jobs to stop" in again.stdout


def test_a_timed_out_demo_says_what_still_runs_and_how_to_follow_or_stop_it(
        local_clusters: Path) -> None:
    spec = importlib.util.spec_from_file_location("demo_driver",
                                                  REPO_ROOT / "scripts" / "demo_driver.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    jobs = LocalJobs(load_profile("local"))
    _start(jobs, "lr-smollm2-135m-lora-r4")
    try:
        tasks = driver.unfinished_tasks([
            {"task_id": "plan", "map_index": -1, "state": "success"},
            {"task_id": "train", "map_index": 0, "state": "success",
             "rendered_map_index": "lr-a"},
            {"task_id": "train", "map_index": 1, "state": "deferred",
             "rendered_map_index": None},
            {"task_id": "evaluate", "map_index": 0, "state": "deferred",
             "rendered_map_index": "lr-eval-smollm2-135m"},
            {"task_id": "publish", "map_index": -1, "state": None}])
        assert tasks == ["evaluate[lr-eval-smollm2-135m]: deferred", "publish: not started",
                         "train[1]: deferred"]
        message = driver.timeout_message("lora_regret_sweep", "manual__1", tasks,
                                         driver.local_jobs(), timeout_s=60)
    finally:
        jobs.stop_all()
    assert "did not finish within 60 s" in message
    assert "train[1]: deferred" in message and "tail -f" in message
    assert str(jobs.job_dir("lr-smollm2-135m-lora-r4") / "job.log") in message
    assert "/dags/lora_regret_sweep/runs/manual__1" in message and "make down" in message
