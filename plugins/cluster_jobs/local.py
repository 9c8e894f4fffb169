"""The local job backend: each job a detached process group on this machine.

Used when no cluster is configured (the embedded default). It keeps the SLURM backend's
interface and folder layout, so the operator and trigger do not care which one runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from cluster_jobs.local_runner import RESULT_FILE, STARTED_FILE
from cluster_jobs.script import render_script
from contracts.jobs import (
    EXIT_CODE_FILE,
    JOB_ID_FILE,
    LOG_FILE,
    SCRIPT_FILE,
    JobRequest,
)
from contracts.profiles import ClusterProfile
from contracts.states import JobState, JobStatus

PID_FILE = "runner.pid"
LOCK_FILE = "runner.lock"
CANCEL_FILE = "cancel_requested"


class LocalJobs:
    """Submit, sense, cancel and read logs of local jobs under ``profile.work_dir``."""

    def __init__(self, profile: ClusterProfile) -> None:
        self.profile = profile
        self.work_dir = profile.local_path(profile.work_dir)

    def job_dir(self, job_id: str) -> Path:
        return self.work_dir / job_id

    def submit(self, request: JobRequest, environ: Mapping[str, str]) -> tuple[str, bool]:
        """Start the job, or find the one already started for this key (a task retry).

        Returns (job id, re-attached?); the job id is the key."""
        if request.key is None:
            raise ValueError("key: a local job needs an idempotency key")
        job_id = request.key
        job_dir = self.job_dir(job_id)
        if (job_dir / JOB_ID_FILE).is_file():
            return job_id, True
        job_dir.mkdir(parents=True, exist_ok=True)
        for name, content in request.files.items():
            (job_dir / name).write_text(content)
        env_in = {k: environ[k] for k in self.profile.pass_env if k in environ}
        script = render_script(self.profile, request, str(job_dir), env_in)
        (job_dir / SCRIPT_FILE).write_text(script)
        limit = self.profile.resources_for(request.resources_key,
                                           request.resources).time_limit_seconds
        env = {**os.environ, "CLUSTER_JOB_ID": job_id}
        env.pop("SLURM_JOB_ID", None)
        lock = os.open(job_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # handed to the runner, held while it lives
            proc = subprocess.Popen(
                [sys.executable, "-m", "cluster_jobs.local_runner", str(job_dir), str(limit),
                 *self._slot_args()],
                cwd=job_dir, env=env, start_new_session=True, pass_fds=(lock,),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(lock)
        (job_dir / PID_FILE).write_text(str(proc.pid))
        (job_dir / JOB_ID_FILE).write_text(job_id)
        return job_id, False

    def _slot_args(self) -> list[str]:
        slots = self.profile.max_parallel_jobs
        return [str(self.work_dir / ".slots"), str(slots)] if slots else []

    def existing(self, key: str) -> str | None:
        job_id_file = self.job_dir(key) / JOB_ID_FILE
        return job_id_file.read_text().strip() if job_id_file.is_file() else None

    def archive(self, key: str) -> None:
        job_dir = self.job_dir(key)
        if job_dir.is_dir():
            job_dir.rename(job_dir.with_name(f"{key}.ended-{time.time_ns()}"))

    def _runner_alive(self, job_dir: Path) -> bool:
        """The runner holds an exclusive lock on LOCK_FILE for as long as it lives (taken
        before it starts, so there is no window where a starting runner looks dead)."""
        with contextlib.suppress(OSError, ValueError):
            os.waitpid(int((job_dir / PID_FILE).read_text()), os.WNOHANG)  # reap our child
        try:
            fd = os.open(job_dir / LOCK_FILE, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the lock if we got it
        return False

    def status(self, job_id: str, key: str | None = None) -> JobStatus:
        job_dir = self.job_dir(job_id)
        result_file = job_dir / RESULT_FILE
        if result_file.is_file():
            result = json.loads(result_file.read_text())
            return JobStatus(job_id=job_id, state=JobState(result["state"]),
                             exit_code=result["exit_code"], signal=result["signal"])
        if not (job_dir / JOB_ID_FILE).is_file():
            return JobStatus(job_id=job_id, state=JobState.FAILED, reason="unknown job")
        if self._runner_alive(job_dir):
            started = (job_dir / STARTED_FILE).is_file()
            return JobStatus(job_id=job_id,
                             state=JobState.RUNNING if started else JobState.PENDING,
                             reason="" if started else "waiting for a free local job slot")
        if result_file.is_file():  # finished between the two checks
            return self.status(job_id, key)
        if (job_dir / CANCEL_FILE).is_file():
            return JobStatus(job_id=job_id, state=JobState.CANCELLED)
        exit_file = job_dir / EXIT_CODE_FILE
        code = int(exit_file.read_text()) if exit_file.is_file() else None
        return JobStatus(job_id=job_id, state=JobState.FAILED, exit_code=code,
                         reason="the job's runner process vanished")

    def cancel(self, job_id: str) -> None:
        job_dir = self.job_dir(job_id)
        if not job_dir.is_dir() or (job_dir / RESULT_FILE).is_file():
            return
        (job_dir / CANCEL_FILE).touch()
        if self._runner_alive(job_dir):
            pid = int((job_dir / PID_FILE).read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # the runner stops the job's group

    def log_tail(self, key: str, lines: int = 40) -> str:
        log = self.job_dir(key) / LOG_FILE
        if not log.is_file():
            return ""
        with log.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])
