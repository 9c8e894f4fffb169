"""ClusterJobOperator: submit a job, then wait for it in the triggerer.

Retries are for transient trouble only: a dropped SSH connection raises a retryable
error, and the retry re-attaches to the job already submitted (the job folder is keyed
by DAG, run, task and map index). Deterministic failures (bad request, failed job,
timeout, out of memory) fail the task at once with the state, exit code and log tail.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from pydantic import ValidationError

from cluster_jobs.backend import get_backend
from cluster_jobs.slurm import SlurmError, TransientError
from cluster_jobs.trigger import ClusterJobTrigger
from contracts.errors import describe_errors
from contracts.jobs import JobRequest
from contracts.profiles import ClusterProfile, ProfileError, load_profile
from contracts.states import JobState, JobStatus


def task_key(name: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """A stable, filesystem- and shell-safe key for one task instance (not one try)."""
    digest = hashlib.sha256(f"{dag_id}\0{run_id}\0{task_id}\0{map_index}".encode())
    return f"{name[:80]}-{digest.hexdigest()[:12]}"


class ClusterJobOperator(BaseOperator):
    """Run one job (``job``: a JobRequest or its dict) on a cluster profile and wait.

    ``accept_exit_codes``: exit codes besides 0 that end the task successfully (a job
    may report a legitimate non-zero outcome, e.g. a recorded divergence).
    ``exit_code_states``: exit codes a job uses to say what went wrong (e.g. 4 ->
    OUT_OF_MEMORY when the job caught it itself); the failure is reported as that state.
    Returns ``{"job_id", "state", "exit_code", "key", "accounting"}``; the same, plus
    ``log_tail``, is pushed as XCom ``job_result`` whether the job succeeded or not, so a
    downstream task (trigger rule ``all_done``) can record what happened to a failed job.
    """

    RESULT_XCOM_KEY = "job_result"

    # Not "job": its argv and file contents may hold text from untrusted input, which must
    # reach the job verbatim, never pass through Jinja.
    template_fields: Sequence[str] = ("profile",)

    def __init__(
        self,
        *,
        job: dict[str, Any] | JobRequest,
        profile: str | dict[str, Any],
        poll_interval: float | None = None,
        accept_exit_codes: Sequence[int] = (),
        exit_code_states: Mapping[int, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.exit_code_states = {int(k): JobState(v) for k, v in (exit_code_states or {}).items()}
        self.accept_exit_codes = tuple(accept_exit_codes)
        self.job = job.model_dump(mode="json") if isinstance(job, JobRequest) else job
        self.profile = profile
        self.poll_interval = poll_interval
        self._submitted: tuple[ClusterProfile, str] | None = None

    def _resolve(self, context: Any) -> tuple[ClusterProfile, JobRequest]:
        try:
            profile = (load_profile(self.profile) if isinstance(self.profile, str)
                       else ClusterProfile.model_validate(self.profile))
        except ProfileError as error:
            raise AirflowFailException(str(error)) from None
        except ValidationError as error:
            raise AirflowFailException(f"invalid profile:\n{describe_errors(error)}") from None
        try:
            request = JobRequest.model_validate(self.job)
        except ValidationError as error:
            raise AirflowFailException(f"invalid job:\n{describe_errors(error)}") from None
        if request.key is None:
            ti = context["ti"]
            key = task_key(request.name, ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
            request = request.model_copy(update={"key": key})
        return profile, request

    def _succeeded(self, status: JobStatus) -> bool:
        return status.state is JobState.COMPLETED or (
            status.state is JobState.FAILED and status.exit_code is not None
            and status.exit_code in self.accept_exit_codes)

    def execute(self, context: Any) -> Any:
        profile, request = self._resolve(context)
        backend = get_backend(profile)
        try:
            # A retry (or a cleared task) finds the job of an earlier try: re-attach while
            # it runs or if it succeeded; if it ended badly, keep its folder aside and run
            # the job again (a training job resumes from its checkpoint).
            previous = backend.existing(request.key)
            if previous is not None:
                status = backend.status(previous, request.key)
                if status.state.finished and not self._succeeded(status):
                    self.log.info("earlier %s; submitting again", status.describe())
                    backend.archive(request.key)
            job_id, reattached = backend.submit(request, os.environ)
        except TransientError as error:
            raise AirflowException(str(error)) from error  # retryable
        except (SlurmError, ValueError) as error:
            raise AirflowFailException(f"could not submit {request.name}: {error}") from None
        self._submitted = (profile, job_id)
        verb = "re-attached to" if reattached else "submitted"
        self.log.info("%s %s job %s (%s), folder key %s", verb, profile.name, job_id,
                      request.name, request.key)
        self.defer(
            trigger=ClusterJobTrigger(profile=profile.model_dump(mode="json"), job_id=job_id,
                                      key=request.key, poll_interval=self.poll_interval),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("error"):
            # Lost the connection while sensing: retryable; the retry re-attaches.
            raise AirflowException(f"job {event['job_id']}: {event['error']}")
        status = JobStatus.model_validate(event["status"])
        if not self._succeeded(status) and status.state is JobState.FAILED \
                and status.exit_code in self.exit_code_states:
            status = status.model_copy(update={"state": self.exit_code_states[status.exit_code]})
        tail = (event.get("log_tail") or "").rstrip()
        result = {"job_id": status.job_id, "state": status.state.value,
                  "exit_code": status.exit_code, "key": event["key"],
                  "accounting": event.get("accounting")}
        push = getattr(context["ti"], "xcom_push", None)  # absent outside a task run
        if push is not None:
            push(key=self.RESULT_XCOM_KEY,
                 value={**result, "reason": status.reason, "log_tail": tail})
        if self._succeeded(status):
            self.log.info("%s", status.describe())
            return result
        message = status.describe()
        if tail:
            message += f"\nlast lines of the job log:\n{tail}"
        raise AirflowFailException(message)

    def on_kill(self) -> None:
        """The task was killed while submitting: cancel the job it started."""
        if self._submitted is None:
            return
        profile, job_id = self._submitted
        try:
            get_backend(profile).cancel(job_id)
            self.log.info("cancelled job %s", job_id)
        except Exception as error:  # noqa: BLE001 - never mask the kill
            self.log.warning("could not cancel job %s: %s", job_id, error)
