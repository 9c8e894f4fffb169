"""cluster_jobs against a real single-node SLURM cluster reached over a real sshd.

The cluster and sshd are started by the `local_slurm` fixture (tests/slurm_fixtures.py);
jobs are submitted through the Airflow SSH connection and sensed by the trigger over
asyncssh, exactly as in the triggerer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from cluster_jobs.batch import submit_jobs
from cluster_jobs.operators import ClusterJobOperator
from cluster_jobs.poller import ClusterPoller
from cluster_jobs.slurm import SlurmJobs
from cluster_jobs.trigger import ClusterJobTrigger
from slurm_fixtures import SCRIPT
from trigger_helpers import first_event, sense, sense_all

from contracts.jobs import JOB_ID_PLACEHOLDER, JobRequest
from contracts.profiles import ClusterProfile, ResourceRequest
from contracts.states import JobState
from contracts.sweep import load_named_sweep

pytestmark = pytest.mark.slurm

PAYLOADS = ['"; rm -rf / #', "$(id)", "`id`", "a\nb; id", "'; id; '", "${HOME}", "|id"]




def _sshd(local_slurm, command: str) -> None:
    """Stop or start the cluster's sshd or slurmctld (an outage)."""
    subprocess.run(["bash", str(SCRIPT), command, str(local_slurm.root)], check=True,
                   capture_output=True, timeout=60)


def submit(profile: ClusterProfile, request: JobRequest) -> ClusterJobTrigger:
    job_id, reattached = SlurmJobs(profile).submit(request, os.environ)
    assert not reattached
    return ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id, key=request.key)


def context(map_index: int = -1) -> dict:
    return {"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=map_index)}


def test_completed_job_over_ssh_gets_hostile_strings_verbatim(slurm_profile: ClusterProfile
                                                               ) -> None:
    code = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], "
            "'env': os.environ['HOSTILE'], 'file': open('payload.txt').read()}))")
    request = JobRequest(name="ok", key="ok", argv=("python3", "-c", code, *PAYLOADS),
                         env={"HOSTILE": PAYLOADS[0]}, files={"payload.txt": PAYLOADS[1]})
    profile = slurm_profile.model_copy(update={"chdir": None})  # run in the job folder
    event = sense(submit(profile, request))
    assert event["status"]["state"] == "COMPLETED", event
    log = (Path(profile.work_dir) / "ok" / "job.log").read_text()
    seen = json.loads(next(line for line in log.splitlines() if line.startswith("{")))
    assert seen == {"argv": list(PAYLOADS), "env": PAYLOADS[0], "file": PAYLOADS[1]}


def test_failed_job_reports_exit_code_and_log_tail(slurm_profile: ClusterProfile) -> None:
    request = JobRequest(name="fails", key="fails",
                         argv=("bash", "-c", "echo step 1; echo 'loss is nan' >&2; exit 3"))
    event = sense(submit(slurm_profile, request))
    assert event["status"]["state"] == "FAILED" and event["status"]["exit_code"] == 3
    operator = ClusterJobOperator(task_id="t", job=request, profile=slurm_profile.model_dump())
    with pytest.raises(AirflowFailException) as failure:
        operator.execute_complete(context(), event)
    assert "exit code 3" in str(failure.value) and "loss is nan" in str(failure.value)


def test_killed_task_cancels_its_slurm_job(slurm_profile: ClusterProfile,
                                           local_slurm) -> None:
    request = JobRequest(name="cancel-me", key="cancel-me", argv=("sleep", "300"))
    trigger = submit(slurm_profile, request)
    deadline = time.monotonic() + 60
    while "JobState=RUNNING" not in local_slurm.scontrol("show", "job", "-o", trigger.job_id):
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)
    asyncio.run(trigger.on_kill())  # the triggerer's reaction to mark-failed / clear
    event = sense(trigger)
    assert event["status"]["state"] == JobState.CANCELLED.value


def test_retry_reattaches_to_the_submitted_job(slurm_profile: ClusterProfile,
                                               local_slurm) -> None:
    request = JobRequest(name="once", argv=("bash", "-c", "sleep 2; echo done"))
    operator = ClusterJobOperator(task_id="t", job=request, profile=slurm_profile.model_dump())
    triggers = []
    for _ in range(2):
        with pytest.raises(TaskDeferred) as deferred:
            operator.execute(context(map_index=7))
        triggers.append(deferred.value.trigger)
    assert triggers[0].job_id == triggers[1].job_id
    event = sense(triggers[1])
    assert operator.execute_complete(context(7), event)["state"] == "COMPLETED"
    assert len(list(Path(slurm_profile.work_dir).iterdir())) == 1


def test_unknown_connection_fails_without_retry_storm(slurm_profile: ClusterProfile) -> None:
    """A dropped/unreachable SSH endpoint is transient: the trigger reports an error
    event naming the job once its outage budget is spent (the operator then raises a
    retryable error, whose retry re-attaches)."""
    os.environ["AIRFLOW_CONN_LR_DEAD"] = json.dumps(
        {"conn_type": "ssh", "host": "127.0.0.1", "port": 1, "login": "nobody"})
    try:
        profile = slurm_profile.model_copy(update={"ssh_conn_id": "lr_dead"})
        trigger = ClusterJobTrigger(profile=profile.model_dump(), job_id="1", key="x",
                                    outage_budget_s=1)
        event = sense(trigger)
    finally:
        os.environ.pop("AIRFLOW_CONN_LR_DEAD")
    assert event["error"] and "unreachable" in event["error"] and "job 1 " in event["error"]
    operator = ClusterJobOperator(task_id="t", job={"name": "x", "argv": ["true"]},
                                  profile=profile.model_dump())
    with pytest.raises(Exception) as raised:
        operator.execute_complete(context(), event)
    assert not isinstance(raised.value, AirflowFailException)  # retryable


@pytest.mark.slow
def test_time_limit_ends_in_timeout(slurm_profile: ClusterProfile) -> None:
    """SLURM limits are whole minutes, checked about every 30 s: this takes 60-90 s."""
    profile = ClusterProfile.model_validate(
        {**slurm_profile.model_dump(), "resources": {"time_limit": "1"}})
    event = sense(submit(profile, JobRequest(name="slow", key="slow", argv=("sleep", "600"))))
    assert event["status"]["state"] == "TIMEOUT"


@pytest.mark.slow
def test_training_spec_runs_as_a_slurm_job_and_lands_in_mlflow(
    slurm_profile: ClusterProfile, mlflow_uri: str
) -> None:
    from mlflow.tracking import MlflowClient

    # The tiny sweep's first run (kept in step with the training job), 2 steps.
    spec = load_named_sweep("tiny").expand(
        max_steps=2, sweep_id="slurm-test", output_dir=slurm_profile.outputs_dir)[0]
    request = JobRequest(
        name="train", key="train", files={"spec.yaml": spec.to_yaml()},
        argv=(slurm_profile.python_executable(), "-m", "training", "--spec",
              "{job_dir}/spec.yaml", "--job-id", JOB_ID_PLACEHOLDER),
    )
    trigger = submit(slurm_profile, request)
    event = sense(trigger, timeout=600)
    assert event["status"]["state"] == "COMPLETED", event
    runs = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name(spec.experiment).experiment_id],
        filter_string=f"tags.spec_hash = '{spec.spec_hash}'")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["outcome"] == "finished" and tags["job_id"] == trigger.job_id


def test_rejected_submission_fails_at_once(slurm_profile: ClusterProfile) -> None:
    """sbatch refusing the job is deterministic: no retry, the message says why."""
    profile = slurm_profile.model_copy(update={"partition": "no-such-partition"})
    operator = ClusterJobOperator(task_id="t", job={"name": "x", "argv": ["true"]},
                                  profile=profile.model_dump())
    with pytest.raises(AirflowFailException, match="(?i)partition"):
        operator.execute(context())


def test_cleared_task_runs_a_failed_slurm_job_again(slurm_profile: ClusterProfile) -> None:
    profile = slurm_profile.model_copy(update={"chdir": None})
    script = "if [ -f ../tried ]; then echo second; else touch ../tried; exit 3; fi"
    operator = ClusterJobOperator(task_id="t", profile=profile.model_dump(),
                                  job={"name": "flaky", "argv": ["bash", "-c", script]})
    states = []
    for _ in range(2):
        with pytest.raises(TaskDeferred) as deferred:
            operator.execute(context(map_index=1))
        states.append(sense(deferred.value.trigger)["status"]["state"])
    assert states == ["FAILED", "COMPLETED"]
    assert len([p for p in Path(profile.work_dir).iterdir() if p.is_dir()]) == 2


# -- batches, one poller per cluster, outages ------------------------------------------------

def _stats(conn_id: str) -> dict[str, int]:
    return dataclasses.asdict(ClusterPoller.total(conn_id))


def _delta(before: dict[str, int], conn_id: str) -> dict[str, int]:
    return {k: v - before[k] for k, v in _stats(conn_id).items()}


def _triggers(profile: ClusterProfile, jobs) -> list[ClusterJobTrigger]:
    return [ClusterJobTrigger(profile=profile.model_dump(), job_id=j.job_id, key=j.key)
            for j in jobs if j.job_id]


def test_batch_costs_one_connection_to_submit_and_one_to_sense(
        slurm_profile: ClusterProfile, local_slurm) -> None:
    profile = slurm_profile.model_copy(update={"chdir": None})
    requests = [JobRequest(name=f"b{i}", key=f"b{i}",
                           argv=("bash", "-c", f"sleep 2; echo done {i}; exit {3 * (i == 4)}"))
                for i in range(6)]
    refused = JobRequest(name="refused", key="refused", argv=("true",),
                         resources=ResourceRequest(mem="99999999G"))  # no node has that
    after = JobRequest(name="after", key="after", argv=("true",), after=("b0", "b1"))
    with SlurmJobs(profile) as jobs:
        out = submit_jobs(jobs, [*requests, refused, after], os.environ)
        assert (jobs.connections_opened, jobs.commands_run) == (1, 2)  # read folders, submit
    by_key = {j.key: j for j in out}
    assert by_key["refused"].result == "error" and "Memory specification" in by_key["refused"].error
    assert all(j.result == "submitted" for k, j in by_key.items() if k != "refused")
    pending = local_slurm.scontrol("show", "job", "-o", by_key["after"].job_id)
    assert f"Dependency=afterany:{by_key['b0'].job_id}" in pending  # waits for b0 and b1
    assert by_key["b1"].job_id in pending

    before = _stats(profile.ssh_conn_id)
    events = {e["key"]: e for e in sense_all(_triggers(profile, out))}
    used = _delta(before, profile.ssh_conn_id)
    assert {k: e["status"]["state"] for k, e in events.items()} == {
        **{f"b{i}": "COMPLETED" for i in (0, 1, 2, 3, 5)}, "b4": "FAILED", "after": "COMPLETED"}
    assert events["b4"]["status"]["exit_code"] == 3 and "done 4" in events["b4"]["log_tail"]
    assert events["b0"]["accounting"]["source"] == "squeue"
    assert used["connections_opened"] == 1 and used["jobs_sensed"] == 7
    assert used["scheduler_queries"] == used["polls"] >= 2  # one squeue per poll, for all


def test_outage_longer_than_a_poll_is_waited_out_without_a_second_submission(
        slurm_profile: ClusterProfile, local_slurm) -> None:
    profile = slurm_profile.model_copy(update={"chdir": None})
    requests = [JobRequest(name=f"outage{i}", key=f"outage{i}", argv=("sleep", "8"))
                for i in range(3)]
    with SlurmJobs(profile) as jobs:
        out = submit_jobs(jobs, requests, os.environ)
    before = _stats(profile.ssh_conn_id)

    async def scenario() -> list[dict]:
        sensing = [asyncio.create_task(first_event(t)) for t in _triggers(profile, out)]
        await asyncio.sleep(2.5)  # a few polls (poll interval 1 s)
        await asyncio.to_thread(_sshd, local_slurm, "sshd-stop")
        try:
            await asyncio.sleep(4)  # the polls meanwhile fail: the jobs are kept
            assert not any(task.done() for task in sensing)
        finally:
            await asyncio.to_thread(_sshd, local_slurm, "sshd-start")
        return list(await asyncio.gather(*sensing))

    events = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert [e["status"]["state"] for e in events] == ["COMPLETED"] * 3
    used = _delta(before, profile.ssh_conn_id)
    assert used["failures"] >= 1 and used["connections_opened"] >= 2
    # No second submission: each folder still names its first job, SLURM knows 3 jobs.
    assert [(Path(profile.work_dir) / j.key / "job_id").read_text().strip() for j in out] == [
        j.job_id for j in out]
    names = ",".join(r.name for r in requests)
    known = local_slurm.squeue("-h", "-t", "all", "-n", names, "-o", "%i").split()
    assert sorted(known) == sorted(j.job_id for j in out)


def test_outage_beyond_the_budget_fails_naming_the_job_and_the_retry_reattaches(
        slurm_profile: ClusterProfile, local_slurm) -> None:
    profile = slurm_profile.model_copy(update={"chdir": None, "outage_budget_s": 2})
    request = JobRequest(name="budget", key="budget", argv=("sleep", "6"))
    job_id, _ = SlurmJobs(profile).submit(request, os.environ)
    _sshd(local_slurm, "sshd-stop")
    try:
        event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id,
                                        key="budget"), timeout=60)
    finally:
        _sshd(local_slurm, "sshd-start")
    assert f"job {job_id} " in event["error"] and "re-attaches" in event["error"]
    operator = ClusterJobOperator(task_id="t", job=request, profile=profile.model_dump())
    with pytest.raises(Exception, match=job_id) as raised:
        operator.execute_complete(context(), event)
    assert not isinstance(raised.value, AirflowFailException)  # retryable
    retried = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id,
                                      key="budget"))
    assert retried["status"]["state"] == "COMPLETED"


def test_scheduler_outage_is_backed_off_on_the_same_connection(
        slurm_profile: ClusterProfile, local_slurm) -> None:
    """slurmctld stopped (as when it restarts or rate-limits): squeue fails, the poller
    backs off keeping its SSH connection and every job, and senses them all afterwards."""
    profile = slurm_profile.model_copy(update={"chdir": None})
    requests = [JobRequest(name=f"ctld{i}", key=f"ctld{i}", argv=("sleep", "6"))
                for i in range(3)]
    with SlurmJobs(profile) as jobs:
        out = submit_jobs(jobs, requests, os.environ)
    before = _stats(profile.ssh_conn_id)

    async def scenario() -> list[dict]:
        sensing = [asyncio.create_task(first_event(t)) for t in _triggers(profile, out)]
        await asyncio.sleep(2)
        await asyncio.to_thread(_sshd, local_slurm, "ctld-stop")
        try:
            # Longer than the jobs (they end while nobody listens) and than squeue's own
            # retries (about 10 s), so queries fail.
            await asyncio.sleep(15)
            assert not any(task.done() for task in sensing)
        finally:
            await asyncio.to_thread(_sshd, local_slurm, "ctld-start")
        return list(await asyncio.gather(*sensing))

    events = asyncio.run(asyncio.wait_for(scenario(), 180))
    assert [e["status"]["state"] for e in events] == ["COMPLETED"] * 3
    used = _delta(before, profile.ssh_conn_id)
    assert used["failures"] >= 1 and used["connections_opened"] == 1
