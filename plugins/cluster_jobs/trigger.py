"""The trigger that senses a job in the triggerer, so a waiting job holds no worker slot.

SLURM jobs are sensed through their cluster's shared poller (``cluster_jobs.poller``): all
triggers of one cluster in a triggerer share one SSH connection and one state query per
poll interval, and outages are waited out up to the profile's budget. Local jobs are
sensed by reading their folders. PREEMPTED/REQUEUED jobs are waited for. The event
carries the final status and, when the job did not complete, its log tail.

The job is named either directly (``profile``, ``job_id``, ``key``: a task that submitted
it deferred here) or by the task that submitted it (``submitted_by``, ``group``): then the
trigger finds its job in that task's output at its own map index. That second form needs
no worker at all: the operator starts in the triggerer (``start_from_trigger``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from cluster_jobs.batch import SubmittedJob, pull_submitted
from cluster_jobs.poller import ClusterPoller, ClusterUnreachable
from cluster_jobs.slurm import LOG_TAIL_LINES, SSH_COMMAND_TIMEOUT_S, cancel_script
from contracts.profiles import ClusterProfile
from contracts.states import JobAccounting, JobState, JobStatus

TRIGGER_PATH = "cluster_jobs.trigger.ClusterJobTrigger"


class ClusterJobTrigger(BaseTrigger):
    """Wait for one job to finish; yield {"job_id", "key", "status", "log_tail",
    "accounting", "error"}.

    ``accounting`` (SLURM only): elapsed seconds and the allocated nodes, GPUs and TRES
    of the finished job. ``error``: sensing gave up (the cluster was unreachable for longer
    than the outage budget); the job may still run and a retry re-attaches to it."""

    def __init__(
        self,
        profile: dict[str, Any] | None = None,
        job_id: str | None = None,
        key: str | None = None,
        poll_interval: float | None = None,
        outage_budget_s: float | None = None,
        submitted_by: str | None = None,
        group: str | None = None,
        max_reconnect_attempts: int | None = None,  # noqa: ARG002 - triggers stored before
    ) -> None:
        super().__init__()
        self.profile = profile
        self.job_id = job_id
        self.key = key
        self.poll_interval = poll_interval
        self.outage_budget_s = outage_budget_s
        self.submitted_by = submitted_by
        self.group = group
        self._job: tuple[ClusterProfile, SubmittedJob] | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (TRIGGER_PATH, {
            "profile": self.profile, "job_id": self.job_id, "key": self.key,
            "poll_interval": self.poll_interval, "outage_budget_s": self.outage_budget_s,
            "submitted_by": self.submitted_by, "group": self.group})

    async def _resolve(self) -> tuple[ClusterProfile, SubmittedJob]:
        """The profile and job this trigger senses (looked up once)."""
        if self._job is None:
            if self.submitted_by and not self.job_id:
                profile, job = await pull_submitted(self.task_instance, self.submitted_by,
                                                    str(self.group))
            else:
                profile = ClusterProfile.model_validate(self.profile)
                job = SubmittedJob(name="", key=str(self.key), job_id=self.job_id)
            self._job = (profile, job)
        return self._job

    def _event(self, job: SubmittedJob, status: JobStatus | None, log_tail: str = "",
               error: str | None = None,
               accounting: JobAccounting | None = None) -> TriggerEvent:
        return TriggerEvent({
            "job_id": job.job_id or "", "key": job.key,
            "status": status.model_dump(mode="json") if status else None,
            "log_tail": log_tail, "error": error,
            "accounting": accounting.model_dump(mode="json") if accounting else None,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            profile, job = await self._resolve()
        except (LookupError, TypeError, ValueError) as error:
            yield TriggerEvent({"job_id": "", "key": self.key or "", "status": None,
                                "log_tail": "", "accounting": None,
                                "error": f"could not find the job to sense: {error}"})
            return
        if job.job_id is None:  # the submit task could not submit it
            status = JobStatus(job_id="", state=JobState.FAILED,
                               reason=f"not submitted: {job.error or 'unknown error'}")
            yield self._event(job, status)
            return
        if profile.backend == "local":
            async for event in self._run_local(profile, job):
                yield event
            return
        try:
            end = await ClusterPoller.shared(profile).wait(
                job.job_id, job.key, interval=self.poll_interval,
                budget_s=self.outage_budget_s, on_change=self._log_change)
        except ClusterUnreachable as error:
            yield self._event(job, None, error=str(error))
            return
        yield self._event(job, end.status, end.log_tail, accounting=end.accounting)

    def _log_change(self, status: JobStatus) -> None:
        self.log.info("%s", status.describe())

    async def _run_local(self, profile: ClusterProfile, job: SubmittedJob
                         ) -> AsyncIterator[TriggerEvent]:
        from cluster_jobs.local import LocalJobs

        jobs = LocalJobs(profile)
        job_id = str(job.job_id)
        last: JobState | None = None
        while True:
            status = await asyncio.to_thread(jobs.status, job_id, job.key)
            if status.state != last:
                self._log_change(status)
                last = status.state
            if status.state.finished:
                tail = "" if status.state.succeeded else await asyncio.to_thread(
                    jobs.log_tail, job.key, LOG_TAIL_LINES)
                yield self._event(job, status, tail)
                return
            await asyncio.sleep(self.poll_interval or profile.poll_interval)

    async def on_kill(self) -> None:
        """A user killed the deferred task (mark failed, clear): cancel the job."""
        profile, job = await self._resolve()
        if job.job_id is None:
            return
        if profile.backend == "local":
            from cluster_jobs.local import LocalJobs

            await asyncio.to_thread(LocalJobs(profile).cancel, job.job_id)
            return
        from airflow.providers.ssh.hooks.ssh import SSHHookAsync

        conn = await SSHHookAsync(ssh_conn_id=profile.ssh_conn_id).get_conn()
        try:
            await conn.run("bash -s", input=cancel_script([job.job_id]),
                           timeout=SSH_COMMAND_TIMEOUT_S, check=False)
        finally:
            conn.close()
            await conn.wait_closed()
