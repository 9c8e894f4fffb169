"""cluster_jobs without a cluster: states, profiles, scripts, the local backend, the
trigger sensing local jobs, and the operator's decisions (re-attach, failure messages)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from cluster_jobs.local import LocalJobs
from cluster_jobs.operators import ClusterJobOperator
from cluster_jobs.script import render_script
from cluster_jobs.slurm import from_slurm
from cluster_jobs.trigger import ClusterJobTrigger
from trigger_helpers import sense

from contracts.jobs import JOB_DIR_PLACEHOLDER, JOB_ID_PLACEHOLDER, JobRequest
from contracts.profiles import (
    ClusterProfile,
    ProfileError,
    load_profile,
    parse_profile,
    profile_names,
)
from contracts.states import FINAL_STATES, JobState

# Strings a hostile trigger conf might smuggle into a command line.
PAYLOADS = ['"; rm -rf / #', "$(id)", "`id`", "a\nb; id", "'; id; '", "${HOME}", "x && id",
            "-rf", "|id", "\\", "*"]




@pytest.fixture
def local_profile(tmp_path: Path) -> ClusterProfile:
    return ClusterProfile(name="local-test", backend="local", work_dir=str(tmp_path / "jobs"),
                          poll_interval=0.2, resources={"time_limit": "10"})


def submit_and_sense(profile: ClusterProfile, request: JobRequest) -> dict:
    job_id, reattached = LocalJobs(profile).submit(request, os.environ)
    assert not reattached
    return sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id,
                                   key=request.key))


def fake_context(map_index: int = -1) -> dict:
    ti = SimpleNamespace(dag_id="d", run_id="manual__1", task_id="t", map_index=map_index)
    return {"ti": ti}


# -- states and profiles -----------------------------------------------------------------

@pytest.mark.parametrize(("slurm", "state"), [
    ("COMPLETED", JobState.COMPLETED), ("CANCELLED by 0", JobState.CANCELLED),
    ("OUT_OF_ME+", JobState.OUT_OF_MEMORY), ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
    ("TIMEOUT", JobState.TIMEOUT), ("NODE_FAIL", JobState.NODE_FAIL),
    ("PREEMPTED", JobState.PREEMPTED), ("REQUEUED", JobState.REQUEUED),
    ("COMPLETING", JobState.RUNNING), ("PENDING", JobState.PENDING),
])
def test_slurm_states_map_to_job_states(slurm: str, state: JobState) -> None:
    assert from_slurm(slurm) is state


def test_preempted_and_requeued_jobs_are_waited_for() -> None:
    assert not JobState.PREEMPTED.finished and not JobState.REQUEUED.finished
    assert {JobState.FAILED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY} <= FINAL_STATES
    with pytest.raises(ValueError, match="unknown SLURM job state"):
        from_slurm("NOT_A_STATE")


def test_every_shipped_profile_loads() -> None:
    names = profile_names()
    assert {"local", "slurm", "alps"} <= set(names)
    for name in names:
        load_profile(name)


def test_alps_profile_follows_the_reference_study() -> None:
    alps = load_profile("alps")
    assert alps.environment and alps.launcher == "torchrun"
    small, large = alps.resources_for("apertus-8b"), alps.resources_for("apertus-70b")
    assert (small.nodes, small.gpus_per_node, small.job_settings) == (2, 4, {"zero_stage": 0})
    assert large.nodes >= 4 and large.job_settings == {"zero_stage": 3}


def test_bad_profile_names_the_field() -> None:
    with pytest.raises(ProfileError, match="partition"):
        parse_profile({"name": "x", "backend": "slurm", "ssh_conn_id": "c",
                       "partition": "gpu; rm -rf /"})
    with pytest.raises(ProfileError, match="ssh_conn_id"):
        parse_profile({"name": "x", "backend": "slurm"})
    with pytest.raises(ProfileError, match="unknown profile"):
        load_profile("nope")


def test_alps_script_is_valid_bash_with_container_and_torchrun(tmp_path: Path) -> None:
    alps = load_profile("alps")
    request = JobRequest(name="j", argv=("python", "-m", "training", "--spec",
                                         f"{JOB_DIR_PLACEHOLDER}/spec.yaml"),
                         resources_key="apertus-70b", key="k")
    script = render_script(alps, request, "/scratch/jobs/k")
    assert "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=4" in script
    assert "--environment=lora-regret" in script and "torchrun" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


# -- the local backend -------------------------------------------------------------------

def test_local_job_gets_hostile_strings_verbatim(local_profile: ClusterProfile,
                                                 tmp_path: Path) -> None:
    """Arguments, environment values and file contents reach the job unchanged."""
    code = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], "
            "'env': os.environ['HOSTILE'], 'job': os.environ['CLUSTER_JOB_ID'], "
            "'file': open(os.environ['JOB_DIR'] + '/payload.txt').read()}))")
    request = JobRequest(name="verbatim", key="verbatim",
                         argv=(sys.executable, "-c", code, *PAYLOADS, JOB_ID_PLACEHOLDER),
                         env={"HOSTILE": PAYLOADS[0]}, files={"payload.txt": "\n".join(PAYLOADS)})
    event = submit_and_sense(local_profile, request)
    assert event["status"]["state"] == "COMPLETED"
    log = (tmp_path / "jobs" / "verbatim" / "job.log").read_text()
    seen = json.loads(next(line for line in log.splitlines() if line.startswith("{")))
    assert seen == {"argv": [*PAYLOADS, "verbatim"], "env": PAYLOADS[0], "job": "verbatim",
                    "file": "\n".join(PAYLOADS)}


def test_local_failure_reports_state_exit_code_and_log_tail(local_profile: ClusterProfile
                                                            ) -> None:
    request = JobRequest(name="fails", key="fails",
                         argv=("bash", "-c", "echo preparing; echo boom >&2; exit 3"))
    event = submit_and_sense(local_profile, request)
    assert event["status"]["state"] == "FAILED" and event["status"]["exit_code"] == 3
    operator = ClusterJobOperator(task_id="t", job=request, profile=local_profile.model_dump())
    with pytest.raises(AirflowFailException) as failure:
        operator.execute_complete(fake_context(), event)
    message = str(failure.value)
    assert "FAILED" in message and "exit code 3" in message and "boom" in message
    # A declared non-zero outcome (e.g. a recorded divergence) ends the task successfully.
    accepting = ClusterJobOperator(task_id="t2", job=request, accept_exit_codes=(3,),
                                   profile=local_profile.model_dump())
    assert accepting.execute_complete(fake_context(), event)["exit_code"] == 3
    # A job that names its failure by exit code (4: it caught an out-of-memory error).
    naming = ClusterJobOperator(task_id="t3", job=request, exit_code_states={3: "OUT_OF_MEMORY"},
                                profile=local_profile.model_dump())
    with pytest.raises(AirflowFailException, match="OUT_OF_MEMORY, exit code 3"):
        naming.execute_complete(fake_context(), event)


def _wait_for_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.is_file() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return path.read_text().strip()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()  # a zombie is gone
    except FileNotFoundError:
        return True


def test_local_cancel_stops_the_whole_process_group(local_profile: ClusterProfile,
                                                    tmp_path: Path) -> None:
    request = JobRequest(name="cancel", key="cancel",
                         argv=("bash", "-c", "sleep 300 & echo $! > inner.pid; wait"))
    jobs = LocalJobs(local_profile)
    job_id, _ = jobs.submit(request, os.environ)
    inner = int(_wait_for_file(tmp_path / "jobs" / "cancel" / "inner.pid"))
    trigger = ClusterJobTrigger(profile=local_profile.model_dump(), job_id=job_id, key="cancel")
    asyncio.run(trigger.on_kill())  # what the triggerer does when a user kills the task
    event = sense(trigger)
    assert event["status"]["state"] == "CANCELLED"
    assert _gone(inner), "the job's child process survived the cancel"


def test_local_time_limit_ends_in_timeout(tmp_path: Path) -> None:
    profile = ClusterProfile(name="short", backend="local", work_dir=str(tmp_path / "jobs"),
                             poll_interval=0.2, resources={"time_limit": "0:02"})  # M:SS
    request = JobRequest(name="slow", key="slow", argv=("sleep", "300"))
    event = submit_and_sense(profile, request)
    assert event["status"]["state"] == "TIMEOUT"
    assert "time limit" in event["log_tail"]


def test_operator_retry_reattaches_instead_of_submitting_again(local_profile: ClusterProfile,
                                                               tmp_path: Path) -> None:
    request = JobRequest(name="once", argv=("bash", "-c", "echo run >> runs.txt; sleep 1"))
    operator = ClusterJobOperator(task_id="t", job=request, profile=local_profile.model_dump())
    triggers = []
    for _ in range(2):  # the first try, then a retry of the same task instance
        with pytest.raises(TaskDeferred) as deferred:
            operator.execute(fake_context(map_index=3))
        triggers.append(deferred.value.trigger)
    assert triggers[0].job_id == triggers[1].job_id
    event = sense(triggers[1])
    assert operator.execute_complete(fake_context(3), event)["state"] == "COMPLETED"
    job_dirs = list((tmp_path / "jobs").iterdir())
    assert len(job_dirs) == 1 and (job_dirs[0] / "runs.txt").read_text() == "run\n"


def test_a_trigger_started_in_the_triggerer_finds_its_job_in_the_submit_output(
        local_profile: ClusterProfile) -> None:
    """The start-from-trigger form: no job id in the kwargs; the trigger reads the chunk
    the submitting task pushed, at its own map index, then senses that job."""
    from cluster_jobs.batch import SubmittedJob, push_submission

    jobs = LocalJobs(local_profile)
    job_id, _ = jobs.submit(JobRequest(name="third", key="third", argv=("true",)), os.environ)
    pushed: dict = {}
    push_submission(lambda key, value: pushed.__setitem__(key, value), local_profile,
                    {"train": [SubmittedJob(name="a", key="a", job_id=None, result="error",
                                            error="sbatch: invalid partition"),
                               SubmittedJob(name="b", key="b", job_id="b"),
                               SubmittedJob(name="third", key="third", job_id=job_id)]})

    class TaskInstance:  # what the triggerer hands a trigger: map index and XCom access
        task_id = "train"

        def __init__(self, map_index: int) -> None:
            self.map_index = map_index

        async def axcom_pull(self, task_ids: str, key: str, map_indexes: int):
            assert (task_ids, map_indexes) == ("submit", -1)
            return pushed.get(key)

    def started_in_triggerer(index: int) -> ClusterJobTrigger:
        trigger = ClusterJobTrigger(submitted_by="submit", group="train")
        trigger.task_instance = TaskInstance(index)
        return trigger

    event = sense(started_in_triggerer(2))
    assert (event["job_id"], event["key"], event["status"]["state"]) == (
        "third", "third", "COMPLETED")
    refused = sense(started_in_triggerer(0))
    assert refused["status"]["state"] == "FAILED"
    assert "not submitted: sbatch: invalid partition" in refused["status"]["reason"]
    assert "could not find the job" in sense(started_in_triggerer(7))["error"]


def test_invalid_job_request_fails_without_submitting(local_profile: ClusterProfile,
                                                      tmp_path: Path) -> None:
    operator = ClusterJobOperator(task_id="t", profile=local_profile.model_dump(),
                                  job={"name": "$(id)", "argv": ["true"]})
    with pytest.raises(AirflowFailException, match="name"):
        operator.execute(fake_context())
    assert not (tmp_path / "jobs").exists()


def test_cleared_task_runs_a_failed_job_again(local_profile: ClusterProfile,
                                               tmp_path: Path) -> None:
    """Re-attaching is for jobs that run or succeeded; a failed one is run again."""
    script = "if [ -f ../tried ]; then echo second; else touch ../tried; exit 3; fi"
    request = JobRequest(name="flaky", argv=("bash", "-c", script))
    operator = ClusterJobOperator(task_id="t", job=request, profile=local_profile.model_dump())
    results = []
    for _ in range(2):
        with pytest.raises(TaskDeferred) as deferred:
            operator.execute(fake_context())
        results.append(sense(deferred.value.trigger)["status"]["state"])
    assert results == ["FAILED", "COMPLETED"]
    assert len([p for p in (tmp_path / "jobs").iterdir() if p.is_dir()]) == 2


def test_local_slot_limit_runs_one_job_at_a_time(tmp_path: Path) -> None:
    """With max_parallel_jobs=1 the second job waits as PENDING; the two never overlap."""
    profile = ClusterProfile(name="one-at-a-time", backend="local", poll_interval=0.2,
                             work_dir=str(tmp_path / "jobs"), max_parallel_jobs=1,
                             resources={"time_limit": "10"})
    jobs = LocalJobs(profile)
    stamps = tmp_path / "stamps"
    script = f"date +%s.%N >> {stamps}/$1.start; sleep 1.5; date +%s.%N >> {stamps}/$1.end"
    stamps.mkdir()
    first, _ = jobs.submit(JobRequest(name="a", key="a", argv=("bash", "-c", script, "_", "a")),
                           os.environ)
    _wait_for_file(stamps / "a.start")
    second, _ = jobs.submit(JobRequest(name="b", key="b", argv=("bash", "-c", script, "_", "b")),
                            os.environ)
    time.sleep(0.5)
    assert jobs.status(second).state is JobState.PENDING
    assert jobs.status(first).state is JobState.RUNNING
    event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=second, key="b"))
    assert event["status"]["state"] == "COMPLETED"
    assert jobs.status(first).state is JobState.COMPLETED
    end_a = float((stamps / "a.end").read_text())
    start_b = float((stamps / "b.start").read_text())
    assert start_b >= end_a


def test_pending_local_job_can_be_cancelled(tmp_path: Path) -> None:
    profile = ClusterProfile(name="one-slot", backend="local", poll_interval=0.2,
                             work_dir=str(tmp_path / "jobs"), max_parallel_jobs=1,
                             resources={"time_limit": "10"})
    jobs = LocalJobs(profile)
    busy, _ = jobs.submit(JobRequest(name="busy", key="busy", argv=("sleep", "30")), os.environ)
    deadline = time.monotonic() + 30
    while jobs.status(busy).state is not JobState.RUNNING:  # holds the only slot
        assert time.monotonic() < deadline
        time.sleep(0.1)
    waiting, _ = jobs.submit(JobRequest(name="w", key="w", argv=("true",)), os.environ)
    time.sleep(0.5)
    assert jobs.status(waiting).state is JobState.PENDING
    jobs.cancel(waiting)
    jobs.cancel(busy)
    event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=waiting, key="w"))
    assert event["status"]["state"] == "CANCELLED"
