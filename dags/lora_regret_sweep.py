"""lora_regret_sweep: train every run of a sweep on a cluster, evaluate, publish.

Trigger it from the UI: pick a sweep preset (default: the 52-run reference grid) and a
cluster profile, optionally override grid axes. The conf is validated before anything is
submitted; runs that already finished in MLflow are skipped unless forced. Each run is one
cluster job, sensed in the triggerer (no worker slot held while it trains); then each base
model is evaluated (LEXam) as one job, and the sweep-results Asset is updated so the
report DAG runs. The logic lives in contracts.plan, tracking and cluster_jobs; this file
wires. The form is generated from contracts.conf.SweepConf.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, task
from cluster_jobs.operators import ClusterJobOperator

from contracts.conf import SweepConf
from contracts.forms import form_fields
from contracts.names import SWEEP_RESULTS_ASSET
from contracts.plan import TRAIN_ACCEPTED_EXIT_CODES, TRAIN_EXIT_CODE_STATES

SWEEP_RESULTS = Asset(**SWEEP_RESULTS_ASSET)
PARAMS = {name: Param(field.pop("default"), **field)
          for name, field in form_fields(SweepConf).items()}


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
        print(the_plan.summary())
        return the_plan.model_dump(mode="json")

    @task
    def train_jobs(plan: dict[str, Any]) -> list[dict[str, Any]]:
        from contracts.plan import SweepPlan

        the_plan = SweepPlan.model_validate(plan)
        return the_plan.job_kwargs(the_plan.train)

    @task(trigger_rule="all_done")
    def record(plan: dict[str, Any], ti: Any = None) -> list[dict[str, str]]:
        """Write what the cluster said (OOM, kills, GPU-hours) into each run, also for
        jobs that died before they could (their task failed; this runs anyway)."""
        from contracts.plan import SweepPlan
        from tracking.record import record_job_result

        recorded = []
        for index, item in enumerate(SweepPlan.model_validate(plan).train):
            result = ti.xcom_pull(task_ids="train", key=ClusterJobOperator.RESULT_XCOM_KEY,
                                  map_indexes=index)  # map index i ran train[i]
            if not result:
                continue  # never submitted, or still to be sensed by a retry
            recorded.append(record_job_result(item.spec, result))
            print(f"{item.spec.run_name}: {result['state']} -> {recorded[-1]['recorded']}")
        return recorded

    @task
    def evaluation_jobs(plan: dict[str, Any]) -> list[dict[str, Any]]:
        from contracts.plan import SweepPlan

        the_plan = SweepPlan.model_validate(plan)
        return the_plan.job_kwargs(the_plan.evaluate)

    @task(outlets=[SWEEP_RESULTS], trigger_rule="none_failed")
    def publish(plan: dict[str, Any], outlet_events: Any = None) -> str:
        """Mark the sweep's results as updated; the report DAG is scheduled on this."""
        outlet_events[SWEEP_RESULTS].extra = {"sweep_id": plan["sweep_id"]}
        return plan["sweep_id"]

    the_plan = plan()
    train = ClusterJobOperator.partial(
        task_id="train",
        retries=2,  # transient errors only: deterministic failures fail at once
        retry_delay=timedelta(seconds=30),
        accept_exit_codes=TRAIN_ACCEPTED_EXIT_CODES,
        exit_code_states=TRAIN_EXIT_CODE_STATES,
        map_index_template="{{ task.job.name }}",
    ).expand_kwargs(train_jobs(the_plan))
    train >> record(the_plan)
    eval_jobs = evaluation_jobs(the_plan)
    train >> eval_jobs
    evaluate = ClusterJobOperator.partial(
        task_id="evaluate",
        retries=2,
        retry_delay=timedelta(seconds=30),
        map_index_template="{{ task.job.name }}",
    ).expand_kwargs(eval_jobs)
    evaluate >> publish(the_plan)


lora_regret_sweep()
