"""The trigger that senses a job in the triggerer, so a waiting job holds no worker slot.

SLURM jobs are polled over one reused asyncssh connection (reconnecting with backoff when
it drops); local jobs by reading their folder. PREEMPTED/REQUEUED jobs are waited for.
The event carries the final status and, when the job did not complete, its log tail.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from cluster_jobs.slurm import (
    SSH_COMMAND_TIMEOUT_S,
    TransientError,
    accounting_command,
    cancel_command,
    classify_end,
    log_tail_command,
    parse_accounting,
    parse_status,
    remote_job_dir,
    status_command,
)
from contracts.profiles import ClusterProfile
from contracts.states import JobAccounting, JobState, JobStatus

LOG_TAIL_LINES = 40


def _connection_errors() -> tuple[type[BaseException], ...]:
    import asyncssh

    return (OSError, asyncssh.Error, TimeoutError, EOFError)


class ClusterJobTrigger(BaseTrigger):
    """Wait for one job to finish; yield {"status", "log_tail", "accounting", "error"}.

    ``accounting`` (SLURM only, when the scheduler reports it): elapsed seconds and the
    allocated nodes, GPUs and TRES of the finished job."""

    def __init__(
        self,
        profile: dict[str, Any],
        job_id: str,
        key: str,
        poll_interval: float | None = None,
        max_reconnect_attempts: int = 5,
    ) -> None:
        super().__init__()
        self.profile = profile
        self.job_id = job_id
        self.key = key
        self.poll_interval = poll_interval
        self.max_reconnect_attempts = max_reconnect_attempts

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "cluster_jobs.trigger.ClusterJobTrigger",
            {"profile": self.profile, "job_id": self.job_id, "key": self.key,
             "poll_interval": self.poll_interval,
             "max_reconnect_attempts": self.max_reconnect_attempts},
        )

    @property
    def _profile(self) -> ClusterProfile:
        return ClusterProfile.model_validate(self.profile)

    def _interval(self) -> float:
        return self.poll_interval or self._profile.poll_interval

    def _event(self, status: JobStatus | None, log_tail: str = "",
               error: str | None = None,
               accounting: JobAccounting | None = None) -> TriggerEvent:
        return TriggerEvent({
            "job_id": self.job_id, "key": self.key,
            "status": status.model_dump(mode="json") if status else None,
            "log_tail": log_tail, "error": error,
            "accounting": accounting.model_dump(mode="json") if accounting else None,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        profile = self._profile
        if profile.backend == "local":
            async for event in self._run_local(profile):
                yield event
        else:
            async for event in self._run_slurm(profile):
                yield event

    # -- local ----------------------------------------------------------------------------

    async def _run_local(self, profile: ClusterProfile) -> AsyncIterator[TriggerEvent]:
        from cluster_jobs.local import LocalJobs

        jobs = LocalJobs(profile)
        last: JobState | None = None
        while True:
            status = await asyncio.to_thread(jobs.status, self.job_id, self.key)
            if status.state != last:
                self.log.info("%s", status.describe())
                last = status.state
            if status.state.finished:
                tail = "" if status.state.succeeded else await asyncio.to_thread(
                    jobs.log_tail, self.key, LOG_TAIL_LINES)
                yield self._event(status, tail)
                return
            await asyncio.sleep(self._interval())

    # -- SLURM ----------------------------------------------------------------------------

    async def _connect(self, profile: ClusterProfile):
        from airflow.providers.ssh.hooks.ssh import SSHHookAsync

        return await SSHHookAsync(ssh_conn_id=profile.ssh_conn_id).get_conn()

    @staticmethod
    async def _close(conn: Any) -> None:
        try:
            conn.close()
            await conn.wait_closed()
        except Exception:  # noqa: S110 - teardown is best effort
            pass

    @staticmethod
    async def _run_command(conn: Any, command: str) -> tuple[int | None, str, str]:
        result = await conn.run(command, timeout=SSH_COMMAND_TIMEOUT_S, check=False)
        return result.exit_status, str(result.stdout or ""), str(result.stderr or "")

    async def _run_slurm(self, profile: ClusterProfile) -> AsyncIterator[TriggerEvent]:
        errors = _connection_errors()
        job_dir = remote_job_dir(profile, self.key)
        conn = None
        failures = 0
        last: JobState | None = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await self._connect(profile)
                    code, out, err = await self._run_command(
                        conn, status_command(self.job_id, job_dir))
                    if code != 0:
                        raise TransientError(f"state query exit {code}: {err.strip()[-300:]}")
                    status = parse_status(self.job_id, out)
                    tail = ""
                    accounting = None
                    if status.state.finished and not status.state.succeeded:
                        _, tail, _ = await self._run_command(
                            conn, log_tail_command(job_dir, LOG_TAIL_LINES))
                        status = classify_end(status, tail)
                    if status.state.finished:
                        _, acct, _ = await self._run_command(
                            conn, accounting_command(self.job_id))
                        accounting = parse_accounting(acct)
                except (*errors, TransientError) as error:
                    failures += 1
                    if conn is not None:
                        await self._close(conn)
                        conn = None
                    if failures > self.max_reconnect_attempts:
                        yield self._event(None, error=f"lost the cluster connection: {error}")
                        return
                    delay = min(2 ** (failures - 1), 30) * (1 + random.random())  # noqa: S311
                    self.log.warning("SSH poll failed (%d/%d), retrying in %.1fs: %s",
                                     failures, self.max_reconnect_attempts, delay, error)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                if status.state != last:
                    self.log.info("%s", status.describe())
                    last = status.state
                if status.state.finished:
                    yield self._event(status, tail, accounting=accounting)
                    return
                await asyncio.sleep(self._interval())
        finally:
            if conn is not None:
                await self._close(conn)

    async def on_kill(self) -> None:
        """A user killed the deferred task (mark failed, clear): cancel the job."""
        profile = self._profile
        if profile.backend == "local":
            from cluster_jobs.local import LocalJobs

            await asyncio.to_thread(LocalJobs(profile).cancel, self.job_id)
            return
        conn = await self._connect(profile)
        try:
            await self._run_command(conn, cancel_command(self.job_id))
        finally:
            await self._close(conn)
