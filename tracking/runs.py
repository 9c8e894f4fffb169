"""Training runs found and created by spec hash: the run is the spec's MLflow identity.

The sweep DAG drops specs that already have a finished run before submitting anything, so
triggering the same sweep twice trains nothing twice. A run counts as finished when its tag
``outcome`` is ``finished``; diverged or failed runs are tried again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from contracts.memory import estimate
from contracts.names import TAG_MEMORY_PLAN, TAG_OUTCOME, TAG_SPEC_HASH
from contracts.spec import RunSpec
from tracking.store import client as store_client
from tracking.store import ensure_experiment

PAGE_SIZE = 1000
PARAM_VALUE_LIMIT = 6000


def spec_params(spec: RunSpec) -> dict[str, str]:
    """The spec flattened into MLflow params (``data.source``, ...)."""
    def flatten(prefix: str, value: Any) -> dict[str, str]:
        if isinstance(value, dict):
            out: dict[str, str] = {}
            for key, item in value.items():
                out.update(flatten(f"{prefix}.{key}" if prefix else key, item))
            return out
        return {prefix: "" if value is None else str(value)[:PARAM_VALUE_LIMIT]}

    return flatten("", spec.model_dump(mode="json"))


def memory_plan_record(spec: RunSpec) -> tuple[dict[str, float], dict[str, str]]:
    """The memory plan of a spec that names its layout, as metrics (``memory/plan_*_gb``)
    and the tag ``memory_plan`` (fits | predicted_oom | unknown); empty otherwise."""
    if spec.world_size is None:
        return {}, {}
    plan = estimate(spec)
    return plan.metrics(), {TAG_MEMORY_PLAN: plan.verdict}


def create_spec_run(client: Any, spec: RunSpec) -> str:
    """A new run for ``spec``: its run name, identity tags, ``outcome=running``, params and
    its memory plan (the scaling report sets it beside what happened)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    experiment_id = ensure_experiment(client, spec.experiment)
    metrics, plan_tags = memory_plan_record(spec)
    run_id = client.create_run(experiment_id, run_name=spec.run_name,
                               tags={**spec.tags(), TAG_OUTCOME: "running", **plan_tags}
                               ).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in spec_params(spec).items()],
                     metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    return run_id


def find_spec_run(client: Any, spec: RunSpec) -> Any | None:
    """The newest run of the spec's hash in its experiment, or None."""
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.{TAG_SPEC_HASH} = '{spec.spec_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def finished_spec_hashes(specs: Iterable[RunSpec], tracking_uri: str | None = None) -> set[str]:
    """The spec hashes among ``specs`` that have a finished run in the spec's experiment."""
    client = store_client(tracking_uri)
    wanted: dict[str, set[str]] = defaultdict(set)
    for spec in specs:
        wanted[spec.experiment].add(spec.spec_hash)
    found: set[str] = set()
    for experiment_name in wanted:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            continue
        token = None
        while True:
            page = client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.{TAG_OUTCOME} = 'finished'",
                max_results=PAGE_SIZE,
                page_token=token,
            )
            found.update(run.data.tags.get(TAG_SPEC_HASH, "") for run in page)
            token = page.token
            if not token:
                break
    return found & set().union(*wanted.values())


def pending_specs(specs: list[RunSpec], tracking_uri: str | None = None) -> list[RunSpec]:
    """``specs`` without those already finished, order kept."""
    done = finished_spec_hashes(specs, tracking_uri)
    return [spec for spec in specs if spec.spec_hash not in done]
