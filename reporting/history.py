"""Metric histories of many runs at once, as one long table (run_id, key, step, value).

``MlflowClient.get_metric_history`` costs one request (or query) per run and key and
builds a Python object per point: 52 runs x 4 keys x 467 steps took 2.4 s on SQLite
here, and the store's own ``get_metric_history_bulk`` 3.1 s (same object building).
So each store kind gets its batched path:

- ``sql`` (SQLite, PostgreSQL, MySQL stores): one SELECT over MLflow's metrics table for
  all runs and keys, read straight into pandas (0.5 s for the same data);
- ``rest`` (an MLflow server): the ``get-history-bulk-interval`` endpoint, 100 runs per
  request, every step up to 2,500 per run (longer runs fall back to per-run requests);
- ``client``: per-run ``get_metric_history`` in a thread pool, for any other store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

HISTORY_COLUMNS = ["run_id", "key", "step", "value"]
REST_MAX_RUNS = 100
REST_MAX_STEPS = 2500
REST_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval"


def empty_history() -> pd.DataFrame:
    return pd.DataFrame({"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str),
                         "step": pd.Series(dtype="int64"), "value": pd.Series(dtype=float)})


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return empty_history()
    frame = frame[HISTORY_COLUMNS].astype({"run_id": str, "key": str, "step": "int64",
                                           "value": float})
    return frame.sort_values(["run_id", "key", "step"], kind="stable").reset_index(drop=True)


def store_kind(client: MlflowClient) -> str:
    """'sql', 'rest' or 'client': which batched path this client's store allows."""
    store = client._tracking_client.store  # no public accessor; only its type is used
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if isinstance(store, SqlAlchemyStore):
        return "sql"
    if isinstance(store, RestStore):
        return "rest"
    return "client"


def _fetch_sql(client: MlflowClient, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import select

    store = client._tracking_client.store
    parts = []
    # Stay well under SQLite's bound-parameter limit.
    for start in range(0, len(run_ids), 500):
        query = select(
            SqlMetric.run_uuid.label("run_id"), SqlMetric.key, SqlMetric.step,
            SqlMetric.value, SqlMetric.is_nan,
        ).where(
            SqlMetric.run_uuid.in_(list(run_ids[start:start + 500])),
            SqlMetric.key.in_(list(keys)),
        ).order_by(SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.timestamp)
        with store.engine.connect() as connection:
            parts.append(pd.read_sql(query, connection))
    frame = pd.concat(parts, ignore_index=True)
    # MLflow stores NaN as value 0 with is_nan set (and +-inf as +-max float).
    frame.loc[frame["is_nan"].astype(bool), "value"] = np.nan
    huge = frame["value"].abs() > 1e300
    frame.loc[huge, "value"] = np.sign(frame.loc[huge, "value"]) * np.inf
    return frame


def _fetch_rest(client: MlflowClient, run_ids: Sequence[str], keys: Sequence[str],
                last_steps: dict[str, int]) -> pd.DataFrame:
    from mlflow.utils.rest_utils import http_request_safe

    store = client._tracking_client.store
    short = [r for r in run_ids if last_steps.get(r, 0) < REST_MAX_STEPS]
    long = [r for r in run_ids if r not in set(short)]
    rows: list[dict] = []
    for key in keys:
        for start in range(0, len(short), REST_MAX_RUNS):
            batch = short[start:start + REST_MAX_RUNS]
            response = http_request_safe(
                store.get_host_creds(), REST_ENDPOINT, "GET",
                params={"run_ids": batch, "metric_key": key, "max_results": REST_MAX_STEPS},
            )
            for metric in response.json().get("metrics", []):
                rows.append({"run_id": metric["run_id"], "key": metric["key"],
                             "step": int(metric.get("step", 0)),
                             "value": float(metric.get("value", np.nan))})
    parts = [pd.DataFrame(rows, columns=HISTORY_COLUMNS)] if rows else []
    if long:
        parts.append(_fetch_client(client, long, keys))
    return pd.concat(parts, ignore_index=True) if parts else empty_history()


def _fetch_client(client: MlflowClient, run_ids: Sequence[str],
                  keys: Sequence[str]) -> pd.DataFrame:
    def one(pair: tuple[str, str]) -> list[tuple[str, str, int, float]]:
        run_id, key = pair
        return [(run_id, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    pairs = [(run_id, key) for run_id in run_ids for key in keys]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = [row for chunk in pool.map(one, pairs) for row in chunk]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def fetch_histories(
    client: MlflowClient,
    run_ids: Iterable[str],
    keys: Sequence[str],
    *,
    backend: str = "auto",
    last_steps: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Every logged value of ``keys`` for ``run_ids``, sorted by run, key and step.

    ``last_steps`` (run id -> last logged step) lets the REST path send runs longer than
    the endpoint's per-run limit through per-run requests instead of sampling them.
    """
    run_ids = list(dict.fromkeys(run_ids))
    if not run_ids or not keys:
        return empty_history()
    kind = store_kind(client) if backend == "auto" else backend
    if kind == "sql":
        frame = _fetch_sql(client, run_ids, keys)
    elif kind == "rest":
        frame = _fetch_rest(client, run_ids, keys, last_steps or {})
    elif kind == "client":
        frame = _fetch_client(client, run_ids, keys)
    else:
        raise ValueError(f"history_backend: unknown backend {backend!r} (auto|sql|rest|client)")
    # A step logged twice (a resumed job re-logging) keeps its last value.
    frame = frame.drop_duplicates(["run_id", "key", "step"], keep="last")
    return _tidy(frame)
