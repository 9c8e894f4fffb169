"""What the backends answer about jobs, the same for SLURM and local jobs."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.states import JobAccounting, JobStatus


@dataclass(frozen=True)
class JobReport:
    """A job's state and, once it ended, what the scheduler accounted for it."""

    status: JobStatus
    accounting: JobAccounting | None = None


@dataclass(frozen=True)
class SubmitOutcome:
    """What submitting one request did: ``submitted``, ``existing`` (its folder already
    named a job) or ``error`` (the scheduler refused it; ``error`` says why)."""

    key: str
    result: str
    job_id: str | None = None
    error: str = ""
