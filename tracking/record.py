"""What the cluster said about a training job, written into the spec's MLflow run.

A job SLURM kills (out of memory, time limit, node failure) cannot write its own outcome:
its run stays ``running``, or never exists when the job died before MLflow started. The
sweep DAG hands each job's result (state, exit code, log tail, accounting) to
``record_job_result``, which marks the run ``oom`` or ``failed`` with the reason and the
run's configuration, and logs the cluster's GPU-hours (``cost/gpu_hours_accounted``).
"""

from __future__ import annotations

import time
from typing import Any

from contracts.names import TAG_FAILURE_REASON, TAG_JOB_ID, TAG_JOB_STATE, TAG_OUTCOME
from contracts.outcomes import FINAL_OUTCOMES, classify
from contracts.spec import RunSpec
from tracking.runs import create_spec_run, find_spec_run
from tracking.store import client as store_client


def record_job_result(spec: RunSpec, result: dict[str, Any],
                      tracking_uri: str | None = None) -> dict[str, str]:
    """Write one job's result into the spec's run; returns what was recorded."""
    from mlflow.entities import Metric, RunTag

    client = store_client(tracking_uri)
    state = str(result.get("state") or "")
    job_id = str(result.get("job_id") or "")
    verdict = classify(state, result.get("exit_code"), result.get("log_tail") or "")
    run = find_spec_run(client, spec)
    accounting = result.get("accounting") or {}
    now = int(time.time() * 1000)
    metrics = []
    elapsed, gpus = accounting.get("elapsed_s"), accounting.get("gpus")
    if elapsed is not None:
        metrics.append(Metric("cost/elapsed_s_accounted", float(elapsed), now, 0))
        if gpus is not None:
            metrics.append(Metric("cost/gpu_hours_accounted", float(elapsed) * gpus / 3600,
                                  now, 0))
    if run is None and verdict is None:
        return {"spec_hash": spec.spec_hash, "recorded": "nothing (no run found)",
                "outcome": ""}
    if run is None:  # died before MLflow: a run that says so, with the configuration
        run_id, current = create_spec_run(client, spec), "running"
    else:
        run_id, current = run.info.run_id, run.data.tags.get(TAG_OUTCOME, "")
    tags = [RunTag(TAG_JOB_ID, job_id)] if job_id else []
    if accounting.get("source"):
        tags.append(RunTag("cost/accounting_source", str(accounting["source"])))
    recorded = "accounting"
    terminate = False
    if verdict is not None:
        outcome, reason = verdict
        # The job's own verdict stands unless the cluster knows better (a killed job left
        # "running"; a job that said "failed" was really out of memory).
        if current not in FINAL_OUTCOMES or (outcome == "oom" and current != "oom"):
            tags += [RunTag(TAG_OUTCOME, outcome), RunTag(TAG_FAILURE_REASON, reason),
                     RunTag(TAG_JOB_STATE, state)]
            recorded = current = outcome
            terminate = True
    client.log_batch(run_id, metrics=metrics, tags=tags)
    if terminate:
        client.set_terminated(run_id, status="FAILED")
    return {"spec_hash": spec.spec_hash, "run_id": run_id, "recorded": recorded,
            "outcome": current}
