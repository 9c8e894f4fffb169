"""Seconds to regenerate a sweep's report from a real SQLite MLflow store.

Logs the seed-shaped reference sweep (configs/sweeps/reference.yaml: 52 runs x 467 steps
x 4 step metrics, plus 2 baseline runs) into a fresh SQLite store, then measures:

1. reading the 52 x 4 histories: per-run ``MlflowClient.get_metric_history``, the
   store's ``get_metric_history_bulk``, and reporting's batched SQL path;
2. ``python -m reporting --sweep-id ...`` end to end (a fresh process: imports, fetch,
   analysis, 4 figures as PNG+SVG, report files, report run logged to MLflow), with a
   cold history cache and then a warm one;
3. the same in-process, split by stage (fetch, analyse, figures, report, publish).

Each figure is the median of --repeat runs. Usage:
    .venv/bin/python benchmarks/report_regenerate.py [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

SWEEP = "bench-reference"


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="report-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

    from mlflow.tracking import MlflowClient
    from synthetic_sweep import log_sweep

    from reporting.config import ReportConfig
    from reporting.fetch import HISTORY_KEYS
    from reporting.history import fetch_histories
    from reporting.pipeline import generate

    print(f"[bench] logging the reference sweep into {uri}", file=sys.stderr)
    logged_in = timed(lambda: log_sweep(sweep_id=SWEEP, tracking_uri=uri))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lora-regret").experiment_id
    runs = client.search_runs([experiment], f"tags.sweep_id = '{SWEEP}' and tags.method != 'base'",
                              max_results=1000)
    ids = [r.info.run_id for r in runs]
    points = len(fetch_histories(client, ids, HISTORY_KEYS, backend="sql"))
    store = client._tracking_client.store

    def bulk() -> None:
        for key in HISTORY_KEYS:
            store.get_metric_history_bulk(ids, key, 10**9)

    read = {"per_run_get_metric_history": [], "store_get_metric_history_bulk": [],
            "reporting_sql_batched": []}
    for _ in range(args.repeat):
        read["per_run_get_metric_history"].append(timed(
            lambda: fetch_histories(client, ids, HISTORY_KEYS, backend="client")))
        read["store_get_metric_history_bulk"].append(timed(bulk))
        read["reporting_sql_batched"].append(timed(
            lambda: fetch_histories(client, ids, HISTORY_KEYS, backend="sql")))

    cli = {"cold": [], "warm": []}
    out = work / "reports"
    command = [sys.executable, "-m", "reporting", "--sweep-id", SWEEP, "--output-dir", str(out),
               "--quiet"]
    for _ in range(args.repeat):
        shutil.rmtree(out / "cache", ignore_errors=True)
        for state in ("cold", "warm"):
            print(f"[bench] python -m reporting ({state} cache)", file=sys.stderr)
            cli[state].append(timed(lambda: subprocess.run(command, check=True, cwd=REPO,
                                                           capture_output=True)))

    stages: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
    config = ReportConfig(tracking_uri=uri, sweep_ids=(SWEEP,), output_dir=work / "inproc")
    for _ in range(args.repeat):
        shutil.rmtree(config.resolved_cache_dir, ignore_errors=True)
        for state in ("cold", "warm"):
            report = generate(config)[0]
            assert (report.fetched == 52) == (state == "cold"), (state, report.fetched)
            for stage, seconds in report.seconds.items():
                stages[state].setdefault(stage, []).append(seconds)

    result = {
        "sweep": {"runs": len(ids), "steps": 467, "history_keys": len(HISTORY_KEYS),
                  "history_points": points, "log_seconds": round(logged_in, 1)},
        "repeat": args.repeat,
        "read_histories_s": {k: median(v) for k, v in read.items()},
        "cli_end_to_end_s": {k: median(v) for k, v in cli.items()},
        "in_process_s": {s: {k: median(v) for k, v in d.items()} for s, d in stages.items()},
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
