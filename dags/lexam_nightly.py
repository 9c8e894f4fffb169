"""lexam_nightly: re-evaluate registered model versions on LEXam every day.

Takes the latest version and every aliased version of each registered model
``lora-regret-*`` and evaluates those whose training run has not yet been evaluated on
tonight's evaluation set (its hash covers the questions and options); ``force`` re-runs
them all. Each version runs ``python -m evaluation`` in its own process; metrics land on
the version's training run (``lexam/*``). The logic lives in ``evaluation.nightly``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

# Read here rather than imported, so parsing this file loads neither MLflow nor pydantic
# models; evaluation.nightly.default_data() reads the same variable.
DEFAULT_DATA = os.environ.get("LORA_REGRET_LEXAM_DATA", "hub:LEXam-Benchmark/LEXam")


@dag(
    dag_id="lexam_nightly",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["lora-regret", "evaluation"],
    params={
        "force": Param(False, type="boolean", title="Force",
                       description="Re-evaluate versions already evaluated on this set."),
        "data": Param(DEFAULT_DATA, type="string", title="LEXam data",
                      pattern=r"^[A-Za-z0-9_./:@+=-]{1,512}$",
                      description="Local JSONL/folder or hub:LEXam-Benchmark/LEXam."),
        "choices": Param(4, type="integer", enum=[4, 8, 16, 32], title="Choices"),
        "max_questions": Param(None, type=["null", "integer"], minimum=1,
                               title="Max questions", description="Empty: all."),
        "languages": Param(None, type=["null", "string"], pattern=r"^[a-z,]*$",
                           title="Languages", description="e.g. de,en; empty: all."),
        "max_new_tokens": Param(4096, type="integer", minimum=1, maximum=65536,
                                title="Generation budget"),
        "dtype": Param("bfloat16", type="string", enum=["bfloat16", "float32", "float16"]),
    },
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__,
)
def lexam_nightly() -> None:
    @task
    def versions_to_evaluate(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The versions whose runs lack tonight's evaluation set hash (or all, forced)."""
        from evaluation.nightly import parse_conf, plan_versions

        eval_hash, tasks = plan_versions(parse_conf(dict(params or {})))
        print(f"eval set {eval_hash}: {len(tasks)} version(s) to evaluate")
        return [item.model_dump() for item in tasks]

    @task(max_active_tis_per_dag=1)
    def evaluate(item: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One version, evaluated in its own process."""
        from evaluation.nightly import VersionTask, evaluate_version, parse_conf

        return evaluate_version(VersionTask.model_validate(item), parse_conf(dict(params or {})))

    evaluate.expand(item=versions_to_evaluate())


lexam_nightly()
