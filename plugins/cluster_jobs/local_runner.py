"""Runs one local job: the job script in this process group, a time limit, a result file.

Started detached (its own session) by the local backend, so the job outlives the Airflow
task that submitted it; the result file is how the backend learns the outcome later.
A job may depend on others (their folders listed in AFTER_FILE): the runner first waits
until each of them has ended (has a result) or is gone. With a slot limit, the runner then
waits for one of N slot locks in SLOTS_DIR, so at most N local jobs run at once, in no
particular order. While it waits the job is PENDING, with the reason in WAITING_FILE.
Usage: python -m cluster_jobs.local_runner JOB_DIR TIME_LIMIT_SECONDS [SLOTS_DIR N]
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
from pathlib import Path

from contracts.jobs import LOG_FILE, SCRIPT_FILE
from contracts.states import JobState

RESULT_FILE = "result.json"
STARTED_FILE = "started"
AFTER_FILE = ".after"  # dot files cannot be request files (contracts.safe.FileName)
WAITING_FILE = ".waiting"
KILL_WAIT_S = 10


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def wait_for_dependencies(job_dir: Path, cancelled) -> bool:
    """Wait until every job listed in AFTER_FILE has a result (or its folder is gone);
    False if cancelled meanwhile."""
    after = job_dir / AFTER_FILE
    folders = [Path(line) for line in after.read_text().splitlines() if line.strip()] \
        if after.is_file() else []
    while not cancelled():
        waiting = [f for f in folders if f.is_dir() and not (f / RESULT_FILE).is_file()]
        if not waiting:
            return True
        (job_dir / WAITING_FILE).write_text(
            f"waiting for {len(waiting)} job(s) it depends on, e.g. {waiting[0].name}")
        time.sleep(0.5)
    return False


def wait_for_slot(slots_dir: Path, slots: int, cancelled) -> int | None:
    """Hold one of ``slots`` lock files (kept for the runner's life); None if cancelled."""
    slots_dir.mkdir(parents=True, exist_ok=True)
    while not cancelled():
        for index in range(slots):
            fd = os.open(slots_dir / f"slot-{index}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        time.sleep(0.5)
    return None


def _write_result(job_dir: Path, state: JobState, code: int | None) -> None:
    result = {"state": state.value,
              "exit_code": code if code is None or code >= 0 else None,
              "signal": -code if code is not None and code < 0 else None}
    tmp = job_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(job_dir / RESULT_FILE)


def run(job_dir: Path, time_limit_s: float, slots_dir: Path | None = None,
        slots: int = 0) -> JobState:
    cancelled = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_term)
    if not wait_for_dependencies(job_dir, lambda: cancelled):
        _write_result(job_dir, JobState.CANCELLED, None)
        return JobState.CANCELLED
    (job_dir / WAITING_FILE).write_text("waiting for a free local job slot")
    if slots_dir is not None and slots > 0 and \
            wait_for_slot(slots_dir, slots, lambda: cancelled) is None:
        _write_result(job_dir, JobState.CANCELLED, None)
        return JobState.CANCELLED
    (job_dir / STARTED_FILE).touch()
    with (job_dir / LOG_FILE).open("ab") as log:
        # The job gets its own process group, so stopping it reaches every process it
        # started (and not this runner, which still has to write the result).
        proc = subprocess.Popen(["bash", SCRIPT_FILE], cwd=job_dir, stdout=log,
                                stderr=subprocess.STDOUT, process_group=0)
        deadline = time.monotonic() + time_limit_s
        state: JobState | None = None
        while proc.poll() is None:
            if cancelled:
                state = JobState.CANCELLED
                break
            if time.monotonic() > deadline:
                state = JobState.TIMEOUT
                log.write(b"[cluster_jobs] time limit reached, stopping the job\n")
                log.flush()
                break
            time.sleep(0.2)
        if state is not None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_WAIT_S)
            _signal_group(proc.pid, signal.SIGKILL)  # whatever ignored TERM
            proc.wait()
        code = proc.returncode
        if state is None:
            state = JobState.COMPLETED if code == 0 else JobState.FAILED
    _write_result(job_dir, state, code)
    return state


def main(argv: list[str]) -> int:
    os.umask(0o077)  # the log, results and whatever the job writes: the user's alone
    job_dir, limit = Path(argv[0]), float(argv[1])
    slots_dir, slots = (Path(argv[2]), int(argv[3])) if len(argv) > 3 else (None, 0)
    state = run(job_dir, limit, slots_dir, slots)
    return 0 if state is JobState.COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
