"""A sweep plan as one batch of cluster jobs: keys, the per-sweep bound, dependencies.

The sweep DAG submits every job of a plan in one task, then one mapped task per job
senses it. Each job's key is the key of the task instance that senses it
(``contracts.jobs.task_key`` of the sensing task and its map index), so a retried or
cleared submission finds the same job folders. Two kinds of dependency are added here:
the profile's ``max_jobs_per_sweep`` (each training job waits for the one that many places
before it) and each model's evaluation, which waits for that model's training jobs, so it
starts when they have ended, not when the whole grid has.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from contracts.jobs import JobRequest, task_key
from contracts.plan import SweepPlan

TRAIN_TASK = "train"
EVALUATE_TASK = "evaluate"


def sweep_jobs(plan: SweepPlan, dag_id: str, run_id: str, max_at_once: int | None = None
               ) -> tuple[list[JobRequest], list[JobRequest]]:
    """(training jobs, evaluation jobs) of the plan, keyed and with their dependencies,
    in map-index order."""
    train_keys = [task_key(item.job.name, dag_id, run_id, TRAIN_TASK, index)
                  for index, item in enumerate(plan.train)]
    train = []
    for index, item in enumerate(plan.train):
        lane = (train_keys[index - max_at_once],) if max_at_once and index >= max_at_once \
            else ()
        train.append(item.job.model_copy(update={"key": train_keys[index], "after": lane}))
    evaluate = []
    for index, item in enumerate(plan.evaluate):
        after = tuple(key for key, run in zip(train_keys, plan.train, strict=True)
                      if run.spec.model == item.spec.model)
        evaluate.append(item.job.model_copy(update={
            "key": task_key(item.job.name, dag_id, run_id, EVALUATE_TASK, index),
            "after": after}))
    return train, evaluate


def evaluations_to_rerun(evaluations: Sequence[JobRequest], submitted: Collection[str]
                         ) -> set[str]:
    """Keys of evaluation jobs that must run again because a training job they wait for
    was (re)submitted just now: an earlier evaluation did not see that run."""
    fresh = set(submitted)
    return {str(job.key) for job in evaluations if fresh.intersection(job.after)}


def follow_shared(evaluations: Sequence[JobRequest], train: Sequence[JobRequest],
                  trained: Sequence[Any]) -> list[JobRequest]:
    """Evaluations waiting for the jobs that really train their runs: a training request
    answered with another trigger's job (its claim was held) is replaced in ``after`` by
    that job's key (``trained``: the submitted jobs, in ``train``'s order)."""
    moved = {str(r.key): job.key for r, job in zip(train, trained, strict=True)
             if job.key != r.key}
    return [e.model_copy(update={"after": tuple(moved.get(k, k) for k in e.after)})
            if moved.keys() & set(e.after) else e for e in evaluations]
