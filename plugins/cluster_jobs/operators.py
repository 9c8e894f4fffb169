"""Operators that wait for cluster jobs in the triggerer (no worker slot held meanwhile).

``ClusterJobOperator`` submits one job itself, then waits for it. ``SubmittedJobOperator``
waits for a job that an upstream task submitted in a batch (``cluster_jobs.batch``): one
mapped task instance per job, started directly in the triggerer, so a sweep of many jobs
costs one submitting task instead of one task process per job.

Retries are for transient trouble only: a dropped SSH connection or an outage longer
than the profile's budget raises a retryable error, and the retry re-attaches to the job
already submitted (the job folder is keyed by DAG, run, task and map index).
Deterministic failures (bad request, failed job, timeout, out of memory) fail the task
at once with the state, exit code and log tail.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.triggers.base import StartTriggerArgs
from pydantic import ValidationError

from cluster_jobs.backend import get_backend
from cluster_jobs.batch import pull_submitted_now, succeeded
from cluster_jobs.slurm import SlurmError, TransientError
from cluster_jobs.trigger import TRIGGER_PATH, ClusterJobTrigger
from contracts.errors import describe_errors
from contracts.jobs import JobRequest, task_key
from contracts.profiles import ClusterProfile, ProfileError, load_profile
from contracts.states import JobState, JobStatus

__all__ = ["ClusterJobOperator", "SubmittedJobOperator", "job_results"]

RESULT_XCOM_KEY = "job_result"


class _WaitsForJob(BaseOperator):
    """What happens when the trigger fires: success, or a failure that says why.

    ``accept_exit_codes``: exit codes besides 0 that end the task successfully (a job
    may report a legitimate non-zero outcome, e.g. a recorded divergence).
    ``exit_code_states``: exit codes a job uses to say what went wrong (e.g. 4 ->
    OUT_OF_MEMORY when the job caught it itself); the failure is reported as that state.
    Returns ``{"job_id", "state", "exit_code", "key", "accounting"}``; the same, plus
    ``reason`` and ``log_tail``, is pushed as XCom ``job_result`` whether the job
    succeeded or not, so a downstream task (trigger rule ``all_done``) can record what
    happened to a failed job.
    """

    RESULT_XCOM_KEY = RESULT_XCOM_KEY

    def __init__(self, *, poll_interval: float | None = None,
                 accept_exit_codes: Sequence[int] = (),
                 exit_code_states: Mapping[int, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exit_code_states = {int(k): JobState(v) for k, v in (exit_code_states or {}).items()}
        self.accept_exit_codes = tuple(accept_exit_codes)
        self.poll_interval = poll_interval

    def _succeeded(self, status: JobStatus) -> bool:
        return succeeded(status, self.accept_exit_codes)

    def _finish(self, context: Any, status: JobStatus, key: str, tail: str = "",
                accounting: Any = None) -> dict[str, Any]:
        if not self._succeeded(status) and status.state is JobState.FAILED \
                and status.exit_code in self.exit_code_states:
            status = status.model_copy(update={"state": self.exit_code_states[status.exit_code]})
        result = {"job_id": status.job_id, "state": status.state.value,
                  "exit_code": status.exit_code, "key": key, "accounting": accounting}
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

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("error"):
            # Lost the cluster for longer than the outage budget, or the job could not be
            # found: retryable, and the retry re-attaches to the job.
            raise AirflowException(f"job {event.get('job_id') or '?'}: {event['error']}")
        status = JobStatus.model_validate(event["status"])
        return self._finish(context, status, event["key"],
                            (event.get("log_tail") or "").rstrip(), event.get("accounting"))


class ClusterJobOperator(_WaitsForJob):
    """Run one job (``job``: a JobRequest or its dict) on a cluster profile and wait."""

    # Not "job": its argv and file contents may hold text from untrusted input, which must
    # reach the job verbatim, never pass through Jinja.
    template_fields: Sequence[str] = ("profile",)

    def __init__(self, *, job: dict[str, Any] | JobRequest, profile: str | dict[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job.model_dump(mode="json") if isinstance(job, JobRequest) else job
        self.profile = profile
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

    def execute(self, context: Any) -> Any:
        profile, request = self._resolve(context)
        try:
            with get_backend(profile) as backend:
                # A retry (or a cleared task) finds the job of an earlier try: re-attach
                # while it runs or if it succeeded; if it ended badly, keep its folder
                # aside and run the job again (a training job resumes from its checkpoint).
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

    def on_kill(self) -> None:
        """The task was killed while submitting: cancel the job it started."""
        if self._submitted is None:
            return
        profile, job_id = self._submitted
        try:
            with get_backend(profile) as backend:
                backend.cancel(job_id)
            self.log.info("cancelled job %s", job_id)
        except Exception as error:  # noqa: BLE001 - never mask the kill
            self.log.warning("could not cancel job %s: %s", job_id, error)


class SubmittedJobOperator(_WaitsForJob):
    """Wait for the job an upstream task (``submitted_by``) submitted for this task
    instance: entry ``map_index`` of ``group`` in its ``push_submission`` XComs.

    Build mapped instances with ``SubmittedJobOperator.partial_in_triggerer(...)``: each
    then starts directly in the triggerer (no worker until its job has ended); on a
    worker (``dag.test()``, or ``start_from_trigger`` off) ``execute`` defers to the same
    trigger. ``job_name`` is for display (``map_index_template``)."""

    def __init__(self, *, submitted_by: str, group: str, job_name: str = "",
                 start_from_trigger: bool = False,
                 start_trigger_args: StartTriggerArgs | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.submitted_by = submitted_by
        self.group = group
        self.job_name = job_name
        self.start_from_trigger = start_from_trigger
        self.start_trigger_args = start_trigger_args

    @classmethod
    def partial_in_triggerer(cls, *, task_id: str, submitted_by: str, group: str,
                             poll_interval: float | None = None, **kwargs: Any) -> Any:
        """``partial()`` of mapped instances that start in the triggerer."""
        trigger_kwargs = {"submitted_by": submitted_by, "group": group,
                          "poll_interval": poll_interval}
        return cls.partial(
            task_id=task_id, submitted_by=submitted_by, group=group,
            poll_interval=poll_interval, start_from_trigger=True,
            start_trigger_args=StartTriggerArgs(
                trigger_cls=TRIGGER_PATH, trigger_kwargs=trigger_kwargs,
                next_method="execute_complete", next_kwargs=None, timeout=None),
            **kwargs)

    def execute(self, context: Any) -> Any:
        try:
            profile, job = pull_submitted_now(context["ti"], self.submitted_by, self.group)
        except LookupError as error:
            raise AirflowFailException(str(error)) from None
        if job.job_id is None:
            return self._finish(context, JobStatus(
                job_id="", state=JobState.FAILED,
                reason=f"not submitted: {job.error or 'unknown error'}"), job.key)
        self.log.info("waiting for %s job %s (%s), folder key %s", profile.name, job.job_id,
                      job.name, job.key)
        self.defer(
            trigger=ClusterJobTrigger(profile=profile.model_dump(mode="json"),
                                      job_id=job.job_id, key=job.key,
                                      poll_interval=self.poll_interval),
            method_name="execute_complete",
        )


def job_results(ti: Any, task_id: str, count: int) -> list[dict[str, Any] | None]:
    """The ``job_result`` XCom of each of a mapped task's first ``count`` instances (None
    where an instance never got its job's result)."""
    return [ti.xcom_pull(task_ids=task_id, key=RESULT_XCOM_KEY, map_indexes=index)
            for index in range(count)]
