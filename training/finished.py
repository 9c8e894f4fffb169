"""Which run specs already have a finished run in MLflow.

The sweep DAG drops those before submitting anything, so triggering the same sweep twice
trains nothing twice. A run counts as finished when its tag ``outcome`` is ``finished``
(see docs/CONVENTIONS.md); diverged or failed runs are tried again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from training.spec import RunSpec

PAGE_SIZE = 1000


def finished_spec_hashes(specs: Iterable[RunSpec], tracking_uri: str | None = None) -> set[str]:
    """The spec hashes among ``specs`` that have a finished run in the spec's experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
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
                filter_string="tags.outcome = 'finished'",
                max_results=PAGE_SIZE,
                page_token=token,
            )
            found.update(run.data.tags.get("spec_hash", "") for run in page)
            token = page.token
            if not token:
                break
    return found & set().union(*wanted.values())


def pending_specs(specs: list[RunSpec], tracking_uri: str | None = None) -> list[RunSpec]:
    """``specs`` without those already finished, order kept."""
    done = finished_spec_hashes(specs, tracking_uri)
    return [spec for spec in specs if spec.spec_hash not in done]
