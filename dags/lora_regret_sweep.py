"""lora_regret_sweep: train every run of a sweep on a cluster, evaluate, publish.

Trigger it from the UI: pick a sweep preset (default: the 52-run reference grid) and a
cluster profile, optionally override grid axes. The conf is validated before anything is
submitted (at most ``contracts.plan.MAX_RUNS`` runs); runs that already finished in MLflow
are skipped unless forced.

``submit`` submits every job in one go (one SSH connection for all): one training job per
run and one evaluation job per base model, which the cluster starts when that model's
training jobs have ended (whatever their outcome). Each run is then its own mapped
``train`` task that waits for its job in the triggerer, started there directly (no worker
slot held while it trains; all of a cluster's jobs share one poller). A failed run is an
outcome, not a stop: ``record`` writes every job's result into MLflow, ``publish`` updates
the sweep-results Asset (sweep id and the counts of finished, diverged, OOM and failed
runs) so the report DAG runs, and ``verdict`` fails the DagRun only when a run or an
evaluation failed for a reason other than a recorded outcome (OOM and divergence are
results). To run failed jobs again, clear ``submit`` with its downstream tasks: it
re-attaches to the jobs that run or succeeded and submits the others again.

The logic lives in contracts (plan, submission, outcomes), tracking and cluster_jobs; this
file wires. The form is generated from contracts.conf.SweepConf.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, task
from cluster_jobs.operators import SubmittedJobOperator

from contracts.conf import SweepConf
from contracts.forms import form_fields
from contracts.names import SWEEP_RESULTS_ASSET
from contracts.plan import MAP_CHUNK, MAX_RUNS, TRAIN_ACCEPTED_EXIT_CODES, TRAIN_EXIT_CODE_STATES
from contracts.submission import EVALUATE_TASK, TRAIN_TASK

SWEEP_RESULTS = Asset(**SWEEP_RESULTS_ASSET)
PARAMS = {name: Param(field.pop("default"), **field)
          for name, field in form_fields(SweepConf).items()}
SUBMIT_TASK = "submit"
TRAIN_PARTS = -(-MAX_RUNS // MAP_CHUNK)  # Airflow maps at most max_map_length items a list


@dag(
    dag_id="lora_regret_sweep",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["lora-regret"],
    doc_md=__doc__,
    max_active_runs=4,
)
def lora_regret_sweep() -> None:
    @task
    def plan(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate the conf, expand the grid, drop finished runs, describe every job."""
        from airflow.configuration import conf as airflow_conf
        from airflow.sdk.exceptions import AirflowFailException

        from contracts.conf import parse_conf
        from contracts.errors import SpecError
        from contracts.plan import plan_sweep
        from contracts.profiles import load_profile
        from tracking.runs import finished_spec_hashes

        try:
            conf = parse_conf(dict(params or {}))
            the_plan = plan_sweep(conf, load_profile(conf.cluster), finished_spec_hashes)
        except SpecError as error:
            raise AirflowFailException(str(error)) from None
        map_length = airflow_conf.getint("core", "max_map_length", fallback=1024)
        if min(len(the_plan.train), MAP_CHUNK) > map_length:
            raise AirflowFailException(
                f"this Airflow maps at most {map_length} tasks from one list ([core] "
                f"max_map_length); the sweep maps up to {MAP_CHUNK} runs per list: set "
                f"AIRFLOW__CORE__MAX_MAP_LENGTH to at least {MAP_CHUNK}")
        print(the_plan.summary())
        return the_plan.model_dump(mode="json")

    @task(retries=2, retry_delay=timedelta(seconds=30))
    def submit(plan: dict[str, Any], ti: Any = None) -> dict[str, Any]:
        """Submit every job of the plan over one connection (re-attaching on a retry)."""
        import os
        import time

        from airflow.sdk.exceptions import AirflowException, AirflowFailException
        from cluster_jobs.backend import get_backend
        from cluster_jobs.batch import push_submission, submit_jobs
        from cluster_jobs.slurm import TransientError

        from contracts.plan import SweepPlan
        from contracts.profiles import ProfileError, load_profile
        from contracts.submission import evaluations_to_rerun, follow_shared, sweep_jobs

        the_plan = SweepPlan.model_validate(plan)
        try:
            profile = load_profile(the_plan.profile)
        except ProfileError as error:
            raise AirflowFailException(str(error)) from None
        train, evaluate = sweep_jobs(the_plan, ti.dag_id, ti.run_id, profile.max_jobs_per_sweep)
        started = time.monotonic()
        try:
            with get_backend(profile) as backend:
                trained = submit_jobs(backend, train, os.environ,
                                      accept_exit_codes=TRAIN_ACCEPTED_EXIT_CODES,
                                      take_finished_claims=the_plan.force)
                # A run another trigger already trains is waited for under that job's key.
                evaluate = follow_shared(evaluate, train, trained)
                fresh = {j.key for j in trained if j.result == "submitted"}
                evaluated = submit_jobs(backend, evaluate, os.environ,
                                        rerun=evaluations_to_rerun(evaluate, fresh),
                                        queued={j.key for j in trained if j.queued})
        except TransientError as error:
            raise AirflowException(str(error)) from error  # retryable; re-attaches
        for job in [*trained, *evaluated]:
            print(f"{job.name}: {job.result} {job.job_id or job.error}")
        counts = {r: sum(j.result == r for j in [*trained, *evaluated])
                  for r in ("submitted", "existing", "error")}
        print(f"{len(trained)} training and {len(evaluated)} evaluation job(s) on "
              f"{profile.name} in {time.monotonic() - started:.1f} s: {counts}")
        return push_submission(ti.xcom_push, profile,
                               {TRAIN_TASK: trained, EVALUATE_TASK: evaluated})

    @task
    def job_names(submitted: dict[str, Any], group: str, part: int) -> list[dict[str, Any]]:
        """One part of the group's jobs as mapped keyword arguments (each part stays
        within Airflow's max_map_length; the parts are concatenated)."""
        jobs = submitted["groups"][group][part * MAP_CHUNK:(part + 1) * MAP_CHUNK]
        return [{"job_name": job["name"]} for job in jobs]

    @task(trigger_rule="all_done")
    def record(plan: dict[str, Any] | None, ti: Any = None) -> list[dict[str, str]]:
        """Write what the cluster said (OOM, kills, GPU-hours) into each run, also for
        jobs that died before they could (their task failed; this runs anyway)."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
        from cluster_jobs.operators import RESULT_XCOM_KEY

        from contracts.plan import SweepPlan
        from tracking.record import record_job_result

        if plan is None:
            raise AirflowSkipException("nothing was planned")
        recorded, broken = [], []
        for index, item in enumerate(SweepPlan.model_validate(plan).train):
            result = ti.xcom_pull(task_ids=TRAIN_TASK, key=RESULT_XCOM_KEY,
                                  map_indexes=index)  # map index i ran train[i]
            if not result:
                continue  # never sensed to its end: nothing the cluster said to record
            try:
                recorded.append(record_job_result(item.spec, result))
            except Exception as error:  # noqa: BLE001 - one bad run must not stop the rest
                broken.append(f"{item.spec.run_name}: {error}")
                continue
            print(f"{item.spec.run_name}: {result['state']} -> {recorded[-1]['recorded']}")
        if broken:
            raise AirflowFailException("could not record:\n" + "\n".join(broken))
        return recorded

    @task(outlets=[SWEEP_RESULTS], trigger_rule="all_done")
    def publish(plan: dict[str, Any] | None, submitted: dict[str, Any] | None,
                ti: Any = None, outlet_events: Any = None) -> dict[str, Any]:
        """Mark the sweep's results as updated (whatever happened to single runs); the
        report DAG is scheduled on this. The event carries the sweep id and run counts."""
        from airflow.sdk.exceptions import AirflowSkipException
        from cluster_jobs.operators import job_results

        from contracts.outcomes import summarize

        if plan is None or submitted is None:
            raise AirflowSkipException("the sweep's jobs were never submitted")
        names = [job["name"] for job in submitted["groups"][TRAIN_TASK]]
        summary = summarize(zip(names, job_results(ti, TRAIN_TASK, len(names)), strict=True))
        for run in summary.not_finished:
            print(f"did not finish: {run.name}: {run.outcome} ({run.state}) {run.reason}")
        extra = {"sweep_id": plan["sweep_id"], "runs": summary.counts.model_dump()}
        outlet_events[SWEEP_RESULTS].extra = extra
        return extra

    @task(trigger_rule="all_done")
    def verdict(plan: dict[str, Any] | None, submitted: dict[str, Any] | None,
                ti: Any = None) -> dict[str, int]:
        """Fail the DagRun if a run or an evaluation failed for a reason other than a
        recorded outcome (out of memory and divergence are results, not failures)."""
        from airflow.sdk.exceptions import AirflowFailException
        from cluster_jobs.operators import job_results

        from contracts.outcomes import summarize

        if plan is None:
            raise AirflowFailException("the sweep was not planned: see the plan task's log")
        if submitted is None:
            raise AirflowFailException("the jobs were not submitted: see the submit task")
        problems = []
        for group, what in ((TRAIN_TASK, "run"), (EVALUATE_TASK, "evaluation")):
            names = [job["name"] for job in submitted["groups"][group]]
            summary = summarize(zip(names, job_results(ti, group, len(names)), strict=True))
            failed = (summary.failed if group == TRAIN_TASK else summary.not_finished)
            problems += [f"{what} {r.name}: {r.reason}" for r in failed]
            if group == TRAIN_TASK:
                counts = summary.counts.model_dump()
        if problems:
            shown = problems[:50] + ([f"... and {len(problems) - 50} more (see `publish`)"]
                                     if len(problems) > 50 else [])
            raise AirflowFailException(
                f"{len(problems)} job(s) failed for a reason other than a recorded outcome "
                "(their results are kept; clear `submit` with downstream to run them "
                "again):\n" + "\n".join(shown))
        return counts

    the_plan = plan()
    submitted = submit(the_plan)
    parts = [job_names.override(task_id=f"train_runs_{part + 1}")(submitted, TRAIN_TASK, part)
             for part in range(TRAIN_PARTS)]
    train = SubmittedJobOperator.partial_in_triggerer(
        task_id=TRAIN_TASK,
        submitted_by=SUBMIT_TASK,
        group=TRAIN_TASK,
        retries=2,  # transient errors only: deterministic failures fail at once
        retry_delay=timedelta(seconds=30),
        accept_exit_codes=TRAIN_ACCEPTED_EXIT_CODES,
        exit_code_states=TRAIN_EXIT_CODE_STATES,
        map_index_template="{{ task.job_name }}",
    ).expand_kwargs(parts[0].concat(*parts[1:]))
    evaluate = SubmittedJobOperator.partial_in_triggerer(
        task_id=EVALUATE_TASK,
        submitted_by=SUBMIT_TASK,
        group=EVALUATE_TASK,
        retries=2,
        retry_delay=timedelta(seconds=30),
        map_index_template="{{ task.job_name }}",
    ).expand_kwargs(job_names.override(task_id="evaluate_runs")(submitted, EVALUATE_TASK, 0))
    recorded = record(the_plan)
    train >> recorded
    published = publish(the_plan, submitted)
    [recorded, evaluate] >> published
    published >> verdict(the_plan, submitted)


lora_regret_sweep()
