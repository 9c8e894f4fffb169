"""One interface over the local and SLURM backends, as the operator sees them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from cluster_jobs.local import LocalJobs
from cluster_jobs.slurm import SlurmJobs
from contracts.jobs import JobRequest
from contracts.profiles import ClusterProfile
from contracts.states import JobStatus


class JobBackend(Protocol):
    def submit(self, request: JobRequest, environ: Mapping[str, str]) -> tuple[str, bool]:
        """Start the job, or find the one already started for ``request.key``.

        Returns (job id, re-attached?)."""
        ...

    def existing(self, key: str) -> str | None:
        """The id of the job already submitted for ``key``, if any."""
        ...

    def archive(self, key: str) -> None:
        """Move the folder of ``key``'s finished job aside, so the key can run again."""
        ...

    def status(self, job_id: str, key: str) -> JobStatus: ...

    def cancel(self, job_id: str) -> None: ...

    def log_tail(self, key: str, lines: int = 40) -> str: ...


def get_backend(profile: ClusterProfile) -> JobBackend:
    return LocalJobs(profile) if profile.backend == "local" else SlurmJobs(profile)
