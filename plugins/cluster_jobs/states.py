"""Job states shared by every backend, and the mapping from SLURM's own state names.

One enum for SLURM and local jobs keeps the operator's decisions (wait, succeed, fail,
keep waiting through a requeue) independent of where a job runs.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class JobState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    REQUEUED = "REQUEUED"
    NODE_FAIL = "NODE_FAIL"

    @property
    def finished(self) -> bool:
        """True when the job will not run again: sensing stops here."""
        return self in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self is JobState.COMPLETED


FINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT, JobState.CANCELLED,
     JobState.OUT_OF_MEMORY, JobState.NODE_FAIL}
)

# SLURM's long state names (scontrol JobState, sacct State, squeue %T) -> JobState.
# Preempted and requeued jobs go back to the queue and resume from their checkpoint,
# so they are waited for, never treated as final.
_SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "REQUEUED": JobState.REQUEUED,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SPECIAL_EXIT": JobState.FAILED,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT,
    "TIMEOUT": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "OOM": JobState.OUT_OF_MEMORY,
    "PREEMPTED": JobState.PREEMPTED,
    "NODE_FAIL": JobState.NODE_FAIL,
}


def from_slurm(name: str) -> JobState:
    """Map a SLURM state ("CANCELLED by 0", "CANCELLED+", "OUT_OF_ME+") to a JobState."""
    word = name.strip().split(" ")[0].rstrip("+").upper()
    if word in _SLURM_STATES:
        return _SLURM_STATES[word]
    if word.startswith("OUT_OF_ME"):  # sacct truncates long names
        return JobState.OUT_OF_MEMORY
    raise ValueError(f"unknown SLURM job state {name!r}")


class JobAccounting(BaseModel):
    """What the scheduler's accounting says a finished job used (None: not reported)."""

    model_config = ConfigDict(frozen=True)

    elapsed_s: float | None = None
    nodes: int | None = None
    gpus: int | None = None
    tres: str = ""
    source: str = ""

    @property
    def gpu_hours(self) -> float | None:
        """Elapsed time x allocated GPUs (0 for a job without GPUs)."""
        if self.elapsed_s is None or self.gpus is None:
            return None
        return self.elapsed_s * self.gpus / 3600


class JobStatus(BaseModel):
    """What a backend knows about one job at one moment."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    state: JobState
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""

    def describe(self) -> str:
        parts = [f"job {self.job_id} {self.state.value}"]
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        if self.signal:
            parts.append(f"signal {self.signal}")
        if self.reason and self.reason not in {"None", "(null)"}:
            parts.append(f"reason {self.reason}")
        return ", ".join(parts)
