"""lexam_nightly: re-evaluate registered model versions on LEXam every day.

Takes the latest version and every aliased version of each registered model
``lora-regret-*`` and evaluates them as cluster jobs, one per base model (the same
operator and evaluation job as the sweep): versions whose training run was already
evaluated on tonight's evaluation set (its hash covers the questions and options) are
skipped by the job unless ``force``. Metrics land on each version's training run
(``lexam/*``). The form is generated from contracts.conf.NightlyConf.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from cluster_jobs.operators import ClusterJobOperator

from contracts.conf import NightlyConf
from contracts.forms import form_fields


@dag(
    dag_id="lexam_nightly",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["lora-regret", "evaluation"],
    params={name: Param(field.pop("default"), **field)
            for name, field in form_fields(NightlyConf).items()},
    doc_md=__doc__,
)
def lexam_nightly() -> None:
    @task
    def evaluation_jobs(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The chosen versions, as one evaluation job per base model."""
        from airflow.sdk.exceptions import AirflowFailException

        from contracts.conf import parse_nightly_conf
        from contracts.errors import SpecError
        from contracts.plan import job_kwargs, plan_nightly
        from contracts.profiles import load_profile
        from tracking.versions import versions_to_evaluate

        try:
            conf = parse_nightly_conf(dict(params or {}))
            profile = load_profile(conf.cluster)
        except SpecError as error:
            raise AirflowFailException(str(error)) from None
        versions = versions_to_evaluate()
        jobs = plan_nightly(conf, profile, [(v.model, v.run_id) for v in versions])
        print(f"{len(versions)} version(s) in {len(jobs)} evaluation job(s) on {profile.name}")
        return job_kwargs(jobs, profile.name)

    ClusterJobOperator.partial(
        task_id="evaluate",
        retries=1,
        retry_delay=timedelta(minutes=5),
        map_index_template="{{ task.job.name }}",
    ).expand_kwargs(evaluation_jobs())


lexam_nightly()
