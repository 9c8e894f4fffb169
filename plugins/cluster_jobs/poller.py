"""One poller per cluster: every job sensed on a cluster shares one SSH connection and one
state query per poll interval.

A triggerer runs many deferred tasks in one event loop. Each trigger registers its job
with the poller of its cluster (the profile's SSH connection) and awaits the job's end;
the poller asks ``squeue`` about all registered jobs at once, as submitit's and
snakemake's SLURM executors do, instead of one connection and one query per job. When the
connection or the scheduler fails (sshd restarted, slurmctld down or rate limiting) it
backs off and keeps every job through the outage for up to the profile's
``outage_budget_s``; only then do the waiting jobs fail, naming their job ids, so a retry
re-attaches to jobs that kept running.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cluster_jobs.results import JobReport
from cluster_jobs.slurm import (
    LOG_TAIL_LINES,
    SCHEDULER_BUSY_EXIT,
    SSH_COMMAND_TIMEOUT_S,
    SchedulerBusy,
    TransientError,
    classify_end,
    forgotten_script,
    log_tails_script,
    parse_forgotten,
    parse_log_tails,
    parse_states,
    remote_job_dir,
    states_script,
)
from contracts.profiles import ClusterProfile
from contracts.states import JobAccounting, JobState, JobStatus

log = logging.getLogger(__name__)

FIRST_POLL_DELAY_S = 0.2  # triggers that start together share the first query
MAX_BACKOFF_S = 60.0
# With no job left, the poller keeps its connection this long for jobs still to come (a
# triggerer starts a large sweep's tasks over tens of seconds).
LINGER_S = 60.0


class ClusterUnreachable(RuntimeError):
    """The cluster stayed unreachable for longer than the outage budget."""


@dataclass(frozen=True)
class JobEnd:
    """A finished job: its final status, its log tail (when it did not succeed) and what
    the scheduler accounted for it."""

    status: JobStatus
    log_tail: str = ""
    accounting: JobAccounting | None = None


@dataclass
class PollStats:
    """What a poller cost: connections opened, polls, remote commands and scheduler
    queries (``squeue``, and the accounting fallback for jobs squeue forgot)."""

    connections_opened: int = 0
    polls: int = 0
    commands: int = 0
    scheduler_queries: int = 0
    failures: int = 0
    jobs_sensed: int = 0


@dataclass(eq=False)
class _Watch:
    """One waiting trigger. The poller only puts what it learns into ``news`` (status
    changes, then the JobEnd or the error); the trigger's own coroutine takes them out, so
    its log lines stay in its own log."""

    job_id: str
    key: str
    interval: float
    budget_s: float
    news: asyncio.Queue[JobStatus | JobEnd | BaseException] = field(
        default_factory=asyncio.Queue)
    last: JobState | None = None
    done: bool = False

    def end(self, item: JobEnd | BaseException) -> None:
        if not self.done:
            self.done = True
            self.news.put_nowait(item)


def _connection_errors() -> tuple[type[BaseException], ...]:
    import asyncssh

    return (OSError, asyncssh.Error, TimeoutError, EOFError)


@dataclass(eq=False)
class ClusterPoller:
    """Senses the jobs of one cluster (one SSH connection id) in one event loop."""

    profile: ClusterProfile
    watches: list[_Watch] = field(default_factory=list)
    stats: PollStats = field(default_factory=PollStats)
    _conn: Any = None
    _task: asyncio.Task[None] | None = None
    _outage_since: float | None = None
    _failures: int = 0
    _stopping: bool = False
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    _pollers: ClassVar[dict[tuple[int, str], ClusterPoller]] = {}
    totals: ClassVar[dict[str, PollStats]] = {}  # per connection id, over all pollers

    @classmethod
    def shared(cls, profile: ClusterProfile) -> ClusterPoller:
        """This event loop's poller for the profile's cluster (created on first use)."""
        loop_key = (id(asyncio.get_running_loop()), str(profile.ssh_conn_id))
        poller = cls._pollers.get(loop_key)
        if poller is None or poller._stopping:
            for key, old in list(cls._pollers.items()):  # forget pollers of ended loops
                if old._stopping:
                    del cls._pollers[key]
            poller = cls(profile=profile)
            cls._pollers[loop_key] = poller
        return poller

    @classmethod
    def total(cls, ssh_conn_id: str) -> PollStats:
        return cls.totals.setdefault(ssh_conn_id, PollStats())

    async def wait(self, job_id: str, key: str, *, interval: float | None = None,
                   budget_s: float | None = None,
                   on_change: Callable[[JobStatus], None] | None = None) -> JobEnd:
        """Wait for the job to end; ClusterUnreachable after an outage longer than the
        budget (default: the profile's ``outage_budget_s``)."""
        watch = _Watch(job_id=job_id, key=key, interval=interval or self.profile.poll_interval,
                       budget_s=budget_s or self.profile.outage_budget_s)
        self.watches.append(watch)
        self._arrived.set()
        if self._task is None or self._task.done():
            # A clean context: the loop outlives the trigger that started it, and must not
            # log into that trigger's log.
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"cluster-poller-{self.profile.ssh_conn_id}",
                context=contextvars.Context())
        try:
            while True:
                item = await watch.news.get()
                if isinstance(item, JobEnd):
                    return item
                if isinstance(item, BaseException):
                    raise item
                if on_change is not None:
                    on_change(item)
        finally:
            if watch in self.watches:
                self.watches.remove(watch)

    # -- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            await asyncio.sleep(FIRST_POLL_DELAY_S)
            while True:
                if not self.watches:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), LINGER_S)
                    if not self.watches:  # decided without an await: none can slip in
                        self._stopping = True
                        break
                delay = await self._poll_once()
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._stopping = True
            raise
        except Exception as error:  # noqa: BLE001 - a bug here must not hang every trigger
            self._stopping = True
            log.exception("cluster poller for %s stopped", self.profile.ssh_conn_id)
            for watch in list(self.watches):
                watch.end(error)
        finally:
            await self._drop_connection()

    def _interval(self) -> float:
        return min((w.interval for w in self.watches), default=self.profile.poll_interval)

    def _count(self, **increments: int) -> None:
        total = self.total(str(self.profile.ssh_conn_id))
        for name, value in increments.items():
            setattr(self.stats, name, getattr(self.stats, name) + value)
            setattr(total, name, getattr(total, name) + value)

    async def _connection(self) -> Any:
        if self._conn is None:
            from airflow.providers.ssh.hooks.ssh import SSHHookAsync

            self._conn = await SSHHookAsync(ssh_conn_id=self.profile.ssh_conn_id).get_conn()
            self._count(connections_opened=1)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
                await conn.wait_closed()
            except Exception:  # noqa: S110 - teardown is best effort
                pass

    async def _run(self, script: str, what: str) -> str:
        conn = await self._connection()
        result = await conn.run("bash -s", input=script, timeout=SSH_COMMAND_TIMEOUT_S,
                                check=False)
        self._count(commands=1)
        out, err = str(result.stdout or ""), str(result.stderr or "")
        if result.exit_status == SCHEDULER_BUSY_EXIT:
            raise SchedulerBusy(f"{what}: the scheduler did not answer: {err.strip()[-300:]}")
        if result.exit_status != 0:
            raise TransientError(f"{what} exit {result.exit_status}: {err.strip()[-300:]}")
        return out

    async def _poll_once(self) -> float:
        """One query for every watched job; returns the seconds until the next one."""
        watches = [w for w in self.watches if not w.done]
        if not watches:
            return 0
        try:
            reports = await self._reports({w.job_id: w.key for w in watches})
            ended = [w for w in watches if reports[w.job_id].status.state.finished]
            failed_keys = {w.key for w in ended
                           if not reports[w.job_id].status.state.succeeded}
            tails = await self._log_tails(failed_keys) if failed_keys else {}
        except (*_connection_errors(), TransientError) as error:
            return await self._outage(watches, error)
        self._count(polls=1)
        log.info("cluster %s: %d job(s) polled, %d ended (%d log read(s)); connection %d",
                 self.profile.ssh_conn_id, len(watches), len(ended), 1 if failed_keys else 0,
                 self.stats.connections_opened)
        if self._outage_since is not None:
            log.info("cluster %s reachable again after %.0f s", self.profile.ssh_conn_id,
                     time.monotonic() - self._outage_since)
        self._outage_since, self._failures = None, 0
        for watch in watches:
            report = reports[watch.job_id]
            if report.status.state != watch.last:
                watch.news.put_nowait(report.status)
            watch.last = report.status.state
            if report.status.state.finished:
                tail = tails.get(watch.key, "")
                watch.end(JobEnd(classify_end(report.status, tail), tail, report.accounting))
                self._count(jobs_sensed=1)
        return self._interval()

    async def _reports(self, jobs: dict[str, str]) -> dict[str, JobReport]:
        found = parse_states(await self._run(states_script(jobs), "state query"))
        self._count(scheduler_queries=1)
        missing = {j: remote_job_dir(self.profile, k) for j, k in jobs.items() if j not in found}
        if missing:
            found.update(parse_forgotten(await self._run(forgotten_script(missing),
                                                         "accounting query"), missing))
            self._count(scheduler_queries=1)
        return found

    async def _log_tails(self, keys: set[str]) -> dict[str, str]:
        script, marker = log_tails_script(
            {k: remote_job_dir(self.profile, k) for k in sorted(keys)}, LOG_TAIL_LINES)
        return parse_log_tails(await self._run(script, "reading job logs"), marker)

    async def _outage(self, watches: list[_Watch], error: BaseException) -> float:
        """Keep the jobs through the outage; fail those whose budget is spent."""
        self._count(failures=1)
        if not isinstance(error, SchedulerBusy):
            await self._drop_connection()
        now = time.monotonic()
        self._outage_since = self._outage_since or now
        self._failures += 1
        down_for = now - self._outage_since
        for watch in watches:
            if down_for > watch.budget_s:
                watch.end(ClusterUnreachable(
                    f"the cluster was unreachable for {down_for:.0f} s (budget "
                    f"{watch.budget_s:.0f} s; last error: {error}); job {watch.job_id} "
                    f"(folder key {watch.key}) may still be running: a retry or a clear "
                    "of the task re-attaches to it"))
        delay = min(2 ** (self._failures - 1), MAX_BACKOFF_S, max(self._interval(), 1.0) * 4)
        delay *= 1 + random.random()  # noqa: S311 - jitter, not cryptography
        log.warning("cluster %s: %s; %d job(s) kept, retrying in %.1f s (outage %.0f s)",
                    self.profile.ssh_conn_id, error, len(watches), delay, down_for)
        return delay
