"""Submitting many jobs at once, and finding one of them again from the triggerer.

``submit_jobs`` submits a batch over one backend session (one SSH connection for SLURM):
it re-attaches to the batch's jobs that still run or succeeded, moves the folders of jobs
that ended badly aside and submits them again, and passes each job's dependencies on.
The submitting task pushes the result in small chunks (``push_submission``), so a sensing
task of a large batch, started in the triggerer, pulls only the chunk with its own job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from contracts.jobs import JobRequest
from contracts.profiles import ClusterProfile
from contracts.states import JobState, JobStatus

CHUNK = 64  # jobs per XCom chunk a sensing task pulls (one pull each, with the profile)


@dataclass(frozen=True)
class SubmittedJob:
    """One job of a batch: ``result`` is ``submitted``, ``existing`` (re-attached; then
    ``finished`` says whether it had already ended) or ``error`` (``job_id`` is None)."""

    name: str
    key: str
    job_id: str | None
    result: str = "submitted"
    error: str = ""
    finished: bool = False

    @property
    def queued(self) -> bool:
        """Submitted now, or re-attached to a job that has not ended: a job one can
        depend on."""
        return self.job_id is not None and not self.finished


def succeeded(status: JobStatus, accept_exit_codes: Collection[int] = ()) -> bool:
    return status.state is JobState.COMPLETED or (
        status.state is JobState.FAILED and status.exit_code is not None
        and status.exit_code in accept_exit_codes)


CLAIM_WAIT_S = 60.0  # a claim just taken by another submitter: the time to see its job


def _claimed_elsewhere(backend: Any, requests: Sequence[JobRequest],
                       accept_exit_codes: Collection[int], take_finished: bool
                       ) -> dict[str, SubmittedJob]:
    """Requests whose claim another job holds: key -> that job (its key and id), while it
    runs or if it succeeded (``take_finished``: only while it runs). A claim whose job
    ended otherwise is taken over, and its request is submitted as usual."""
    wanted = {r.claim: str(r.key) for r in requests if r.claim}
    holders = backend.claim_many(wanted) if wanted else {}
    other = {str(r.key): (r, holders[r.claim]) for r in requests
             if r.claim and holders.get(r.claim, r.key) != r.key}
    attached: dict[str, SubmittedJob] = {}
    deadline = time.monotonic() + CLAIM_WAIT_S
    while other:
        jobs = backend.existing_many(sorted({holder for _, holder in other.values()}))
        reports = backend.reports({job_id: key for key, job_id in jobs.items()})
        waiting = {}
        for key, (request, holder) in other.items():
            job_id = jobs.get(holder)
            if job_id is None and time.monotonic() < deadline:
                waiting[key] = (request, holder)  # claimed a moment ago, not submitted yet
                continue
            report = reports.get(job_id) if job_id else None
            status = report.status if report else None
            ended = status is None or status.state.finished
            keep = status is not None and (not ended or (
                not take_finished and succeeded(status, accept_exit_codes)))
            if keep:
                attached[key] = SubmittedJob(name=request.name, key=holder, job_id=job_id,
                                             result="existing", finished=ended)
            elif not backend.take_over(str(request.claim), holder, key):
                new_holder = backend.claim_many({str(request.claim): key})[str(request.claim)]
                if new_holder != key:  # someone else took it over just now: theirs
                    waiting[key] = (request, new_holder)
        other = waiting
        if other:
            time.sleep(1.0)
    return attached


def submit_jobs(backend: Any, requests: Sequence[JobRequest], environ: Mapping[str, str], *,
                accept_exit_codes: Collection[int] = (), rerun: Collection[str] = (),
                queued: Collection[str] = (), take_finished_claims: bool = False
                ) -> list[SubmittedJob]:
    """Submit ``requests`` (each with a key) in one session; one SubmittedJob each, in order.

    A key whose folder already names a job re-attaches to it while it runs or if it
    succeeded (exit 0 or one of ``accept_exit_codes``); a job that ended badly, or whose
    key is in ``rerun``, is moved aside (cancelled first if it still runs) and submitted
    again. A request's ``after`` keys become dependencies when those jobs are submitted in
    this batch or named in ``queued`` (jobs known not to have ended); a dependency that has
    already ended is satisfied and dropped. A job the scheduler refuses is an ``error``
    entry: the others are submitted all the same.

    A request with a ``claim`` another job holds (another trigger of the same sweep) is
    answered with that job, which it then shares, while it runs or if it succeeded
    (``take_finished_claims``, a forced re-run: only while it runs)."""
    keys = [str(r.key) for r in requests]
    if len(set(keys)) != len(keys) or "None" in keys:
        raise ValueError("key: every job of a batch needs its own key")
    shared = _claimed_elsewhere(backend, requests, accept_exit_codes, take_finished_claims)
    own = [r for r in requests if str(r.key) not in shared]
    queued = [*queued, *(j.key for j in shared.values() if j.queued)]
    by_key = {j.key: j for j in _submit_own(backend, own, environ, accept_exit_codes, rerun,
                                            queued)}
    return [shared.get(key) or by_key[key] for key in keys]


def _submit_own(backend: Any, requests: Sequence[JobRequest], environ: Mapping[str, str],
                accept_exit_codes: Collection[int], rerun: Collection[str],
                queued: Collection[str]) -> list[SubmittedJob]:
    """submit_jobs for requests whose claims (if any) are theirs."""
    keys = [str(r.key) for r in requests]
    existing = backend.existing_many(keys)
    reports = backend.reports({job_id: key for key, job_id in existing.items()})
    kept: dict[str, SubmittedJob] = {}
    to_cancel, to_archive = [], []
    for key, job_id in existing.items():
        report = reports.get(job_id)
        status = report.status if report else JobStatus(job_id=job_id, state=JobState.FAILED)
        ended_badly = status.state.finished and not succeeded(status, accept_exit_codes)
        if key in rerun or ended_badly:
            if not status.state.finished:
                to_cancel.append(job_id)
            to_archive.append(key)
        else:
            kept[key] = SubmittedJob(name="", key=key, job_id=job_id, result="existing",
                                     finished=status.state.finished)
    backend.cancel_many(to_cancel)
    backend.archive_many(to_archive)
    fresh = [r for r in requests if r.key not in kept]
    dependable = {r.key for r in fresh} | {k for k, j in kept.items() if j.queued} | set(queued)
    items = [(r, tuple(k for k in r.after if k in dependable)) for r in fresh]
    outcomes = {o.key: o for o in backend.submit_many(items, environ)}
    out = []
    for request in requests:
        key = str(request.key)
        if key in kept:
            out.append(SubmittedJob(**{**asdict(kept[key]), "name": request.name}))
            continue
        outcome = outcomes[key]
        out.append(SubmittedJob(name=request.name, key=key, job_id=outcome.job_id,
                                result=outcome.result, error=outcome.error))
    return out


# -- the submitting task's output, and a sensing task's look-up in it -------------------------

def chunk_key(group: str, index: int) -> str:
    return f"jobs-{group}-{index // CHUNK}"


def push_submission(push: Callable[..., None], profile: ClusterProfile,
                    groups: Mapping[str, Sequence[SubmittedJob]]) -> dict[str, Any]:
    """Push each group's jobs in chunks of CHUNK, each with the profile (XComs of the
    submitting task: a sensing task needs one pull); returns the whole submission, the
    task's return value."""
    dumped = profile.model_dump(mode="json")
    for group, jobs in groups.items():
        for start in range(0, len(jobs), CHUNK):
            push(key=chunk_key(group, start), value={
                "profile": dumped, "jobs": [asdict(j) for j in jobs[start:start + CHUNK]]})
    return {"profile": profile.name,
            "groups": {g: [asdict(j) for j in jobs] for g, jobs in groups.items()}}


async def pull_submitted(ti: Any, task_id: str, group: str
                         ) -> tuple[ClusterProfile, SubmittedJob]:
    """In the triggerer: the profile and this task instance's job (its map index in
    ``group``), from the chunk ``task_id`` pushed (one XCom pull)."""
    index = int(ti.map_index)
    chunk = await ti.axcom_pull(task_ids=task_id, key=chunk_key(group, index), map_indexes=-1)
    return submitted_job(chunk, group, index)


def pull_submitted_now(ti: Any, task_id: str, group: str
                       ) -> tuple[ClusterProfile, SubmittedJob]:
    """The same, on a worker."""
    index = int(ti.map_index)
    chunk = ti.xcom_pull(task_ids=task_id, key=chunk_key(group, index), map_indexes=-1)
    return submitted_job(chunk, group, index)


def submitted_job(chunk: Any, group: str, index: int) -> tuple[ClusterProfile, SubmittedJob]:
    """The ``index``-th job of ``group`` from its chunk; LookupError when there is none."""
    jobs = (chunk or {}).get("jobs") or []
    if index < 0 or index % CHUNK >= len(jobs) or not chunk.get("profile"):
        raise LookupError(f"the submitting task recorded no job {index} of {group!r}")
    return ClusterProfile.model_validate(chunk["profile"]), SubmittedJob(**jobs[index % CHUNK])
