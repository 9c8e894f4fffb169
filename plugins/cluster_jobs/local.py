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
from collections.abc import Mapping, Sequence
from pathlib import Path

from cluster_jobs.local_runner import AFTER_FILE, RESULT_FILE, STARTED_FILE, WAITING_FILE
from cluster_jobs.results import JobReport, SubmitOutcome
from cluster_jobs.script import render_script
from contracts.jobs import (
    EXIT_CODE_FILE,
    JOB_ID_FILE,
    LOG_FILE,
    SCRIPT_FILE,
    JobRequest,
)
from contracts.profiles import ClusterProfile
from contracts.redact import redact_text
from contracts.states import JobState, JobStatus

PID_FILE = "runner.pid"
LOCK_FILE = "runner.lock"
CANCEL_FILE = "cancel_requested"
CLAIMS_DIR = ".claims"  # one file per claim, naming the key of the job that holds it
CANCEL_WAIT_S = 30.0  # the runner stops its job within KILL_WAIT_S, then writes its result


# What a local job inherits from the submitting process besides the profile's pass_env:
# enough to run programs, nothing else (Airflow's own settings and secrets stay behind).
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SHELL")


def job_environment(profile: ClusterProfile, environ: Mapping[str, str],
                    job_id: str) -> dict[str, str]:
    """The environment a local job starts with: BASE_ENV, locale settings, the profile's
    ``pass_env`` and its id."""
    env = {k: v for k, v in environ.items() if k in BASE_ENV or k.startswith("LC_")}
    env.update((k, environ[k]) for k in profile.pass_env if k in environ)
    env["CLUSTER_JOB_ID"] = job_id
    return env


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read (job folders hold specs and scripts)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class LocalJobs:
    """Submit, sense, cancel and read logs of local jobs under ``profile.work_dir``."""

    def __init__(self, profile: ClusterProfile) -> None:
        self.profile = profile
        self.work_dir = profile.local_path(profile.work_dir)

    def __enter__(self) -> LocalJobs:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to close: the interface matches the SLURM session's."""

    def job_dir(self, job_id: str) -> Path:
        return self.work_dir / job_id

    def submit(self, request: JobRequest, environ: Mapping[str, str],
               depends_on: Sequence[str] = ()) -> tuple[str, bool]:
        """Start the job, or find the one already started for this key (a task retry).
        It waits for the jobs of ``depends_on`` (keys) whose folders name one.

        Returns (job id, re-attached?); the job id is the key."""
        if request.key is None:
            raise ValueError("key: a local job needs an idempotency key")
        job_id = request.key
        job_dir = self.job_dir(job_id)
        if (job_dir / JOB_ID_FILE).is_file():
            return job_id, True
        job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, content in request.files.items():
            write_private(job_dir / name, content)
        after = [str(self.job_dir(k)) for k in depends_on
                 if (self.job_dir(k) / JOB_ID_FILE).is_file()]
        if after:
            write_private(job_dir / AFTER_FILE, "\n".join(after) + "\n")
        write_private(job_dir / SCRIPT_FILE, render_script(self.profile, request, str(job_dir)))
        limit = self.profile.resources_for(request.resources_key,
                                           request.resources).time_limit_seconds
        env = job_environment(self.profile, environ, job_id)
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
            if (job_dir / STARTED_FILE).is_file():
                return JobStatus(job_id=job_id, state=JobState.RUNNING)
            waiting = job_dir / WAITING_FILE
            reason = waiting.read_text().strip() if waiting.is_file() else "starting"
            return JobStatus(job_id=job_id, state=JobState.PENDING, reason=reason)
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

    def running_jobs(self) -> list[str]:
        """Job ids (keys) whose runner is alive: queued, waiting or running."""
        if not self.work_dir.is_dir():
            return []
        return sorted(d.name for d in self.work_dir.iterdir()
                      if d.is_dir() and (d / JOB_ID_FILE).is_file() and self._runner_alive(d))

    def stop_all(self, wait_s: float = CANCEL_WAIT_S) -> list[str]:
        """Cancel every job of this work folder that still runs or waits; returns them."""
        running = self.running_jobs()
        self.cancel_many(running, wait_s)
        return running

    # -- batches (the SLURM session's interface) ------------------------------------------

    def submit_many(self, items: Sequence[tuple[JobRequest, Sequence[str]]],
                    environ: Mapping[str, str]) -> list[SubmitOutcome]:
        outcomes = []
        for request, depends_on in items:
            try:
                job_id, reattached = self.submit(request, environ, depends_on)
            except (OSError, ValueError) as error:
                outcomes.append(SubmitOutcome(key=str(request.key), result="error",
                                              error=str(error)))
                continue
            outcomes.append(SubmitOutcome(key=job_id, job_id=job_id,
                                          result="existing" if reattached else "submitted"))
        return outcomes

    def claim_many(self, claims: Mapping[str, str]) -> dict[str, str]:
        """Claim each ``claim`` for its key, atomically; returns claim -> the key holding
        it (the given key, or the one that claimed it first)."""
        folder = self.work_dir / CLAIMS_DIR
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        holders = {}
        for claim, key in claims.items():
            path = folder / claim
            staged = folder / f".{claim}.{key}.{os.getpid()}"
            write_private(staged, key)
            try:
                os.link(staged, path)  # fails if the claim exists: nobody sees half of one
            except FileExistsError:
                pass
            finally:
                staged.unlink(missing_ok=True)
            holders[claim] = path.read_text().strip()
        return holders

    def take_over(self, claim: str, old: str, new: str) -> bool:
        """Move ``claim`` from ``old`` (whose job ended) to ``new``: only one of several
        submitters taking over from the same holder wins."""
        folder = self.work_dir / CLAIMS_DIR
        try:
            os.close(os.open(folder / f"{claim}.from-{old}", os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        staged = folder / f".{claim}.{new}.{os.getpid()}"
        write_private(staged, new)
        os.replace(staged, folder / claim)
        return True

    def existing_many(self, keys: Sequence[str]) -> dict[str, str]:
        return {key: job_id for key in keys if (job_id := self.existing(key)) is not None}

    def reports(self, jobs: Mapping[str, str]) -> dict[str, JobReport]:
        return {job_id: JobReport(self.status(job_id, key)) for job_id, key in jobs.items()}

    def archive_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.archive(key)

    def cancel_many(self, job_ids: Sequence[str], wait_s: float = CANCEL_WAIT_S) -> None:
        """Cancel, then wait until each runner has written its result: a folder moved
        aside before that would have its runner write into the path of a new job."""
        for job_id in job_ids:
            self.cancel(job_id)
        deadline = time.monotonic() + wait_s
        for job_id in job_ids:
            while self._runner_alive(self.job_dir(job_id)) and time.monotonic() < deadline:
                time.sleep(0.2)

    def log_tails(self, keys: Sequence[str], lines: int = 40) -> dict[str, str]:
        return {key: self.log_tail(key, lines) for key in keys}

    def log_tail(self, key: str, lines: int = 40) -> str:
        log = self.job_dir(key) / LOG_FILE
        if not log.is_file():
            return ""
        with log.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
        return redact_text("\n".join(text.splitlines()[-lines:]))


def main(argv: list[str]) -> int:
    """``python -m cluster_jobs.local list|stop [PROFILE]``: the local jobs of a profile
    (default ``local``) that still run or wait, or stop them (``make down`` does)."""
    from contracts.profiles import ProfileError, load_profile

    if not argv or argv[0] not in {"list", "stop"}:
        print("usage: python -m cluster_jobs.local list|stop [PROFILE]", file=sys.stderr)
        return 2
    try:
        profile = load_profile(argv[1] if len(argv) > 1 else "local")
    except ProfileError as error:
        print(error, file=sys.stderr)
        return 2
    if profile.backend != "local":
        print(f"profile {profile.name!r} is not a local profile", file=sys.stderr)
        return 2
    jobs = LocalJobs(profile)
    names = jobs.stop_all() if argv[0] == "stop" else jobs.running_jobs()
    verb = "stopped" if argv[0] == "stop" else "running or waiting"
    for name in names:
        print(f"{verb}: {jobs.job_dir(name)}  (log: {jobs.job_dir(name) / LOG_FILE})")
    if not names:
        print(f"no local jobs {verb if argv[0] == 'list' else 'to stop'} in {jobs.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
