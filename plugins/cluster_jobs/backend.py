"""One interface over the local and SLURM backends, as the operator and the batch
submission see them. A backend is a session: ``with get_backend(profile) as backend``
(one SSH connection for SLURM, however many jobs it handles)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from cluster_jobs.local import LocalJobs
from cluster_jobs.results import JobReport, SubmitOutcome
from cluster_jobs.slurm import SlurmJobs
from contracts.jobs import JobRequest
from contracts.profiles import ClusterProfile
from contracts.states import JobStatus


class JobBackend(Protocol):
    def __enter__(self) -> JobBackend: ...

    def __exit__(self, *exc: object) -> None: ...

    def submit(self, request: JobRequest, environ: Mapping[str, str]) -> tuple[str, bool]:
        """Start the job, or find the one already started for ``request.key``.

        Returns (job id, re-attached?)."""
        ...

    def submit_many(self, items: Sequence[tuple[JobRequest, Sequence[str]]],
                    environ: Mapping[str, str]) -> list[SubmitOutcome]:
        """Submit each request after the jobs of the keys paired with it, in order."""
        ...

    def existing(self, key: str) -> str | None:
        """The id of the job already submitted for ``key``, if any."""
        ...

    def existing_many(self, keys: Sequence[str]) -> dict[str, str]: ...

    def archive(self, key: str) -> None:
        """Move the folder of ``key``'s finished job aside, so the key can run again."""
        ...

    def archive_many(self, keys: Sequence[str]) -> None: ...

    def status(self, job_id: str, key: str) -> JobStatus: ...

    def reports(self, jobs: Mapping[str, str]) -> dict[str, JobReport]:
        """Reports of jobs given as job id -> key, in one query."""
        ...

    def cancel(self, job_id: str) -> None: ...

    def cancel_many(self, job_ids: Sequence[str]) -> None: ...

    def log_tail(self, key: str, lines: int = 40) -> str: ...


def get_backend(profile: ClusterProfile) -> JobBackend:
    return LocalJobs(profile) if profile.backend == "local" else SlurmJobs(profile)
