"""Job states shared by every backend (SLURM's own names are mapped in cluster_jobs.slurm).

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
