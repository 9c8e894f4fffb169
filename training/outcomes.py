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

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from training.spec import RunSpec
from training.tracking import ensure_experiment, flatten

# Accelerator and host out-of-memory messages as they appear in a job log (also from
# ranks other than 0, whose errors the training job cannot record itself).
OOM_MARKERS = ("cuda out of memory", "torch.outofmemoryerror", "outofmemoryerror",
               "hip out of memory", "cublas_status_alloc_failed", "memoryerror",
               "cannot allocate memory", "exceeded memory limit", "oom-kill", "oom_kill")
FINAL_OUTCOMES = {"finished", "diverged", "oom"}


def classify(state: str, exit_code: int | None, log_tail: str) -> tuple[str, str] | None:
    """(outcome, reason) for a job that did not succeed; None for a successful one."""
    if state == "COMPLETED":
        return None
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    if state == "OUT_OF_MEMORY":
        hint = next((ln for ln in reversed(lines) if _is_oom(ln)), "")
        return "oom", f"job state OUT_OF_MEMORY{': ' + hint if hint else ''}"[:4000]
    for line in reversed(lines):
        if _is_oom(line):
            return "oom", f"job {state.lower()}, out of memory in the log: {line}"[:4000]
    code = "" if exit_code is None else f", exit code {exit_code}"
    last = f": {lines[-1]}" if lines else ""
    return "failed", f"job {state}{code}{last}"[:4000]


def _is_oom(line: str) -> bool:
    low = line.lower()
    return any(marker in low for marker in OOM_MARKERS)


def _find_run(client: MlflowClient, spec: RunSpec) -> Any | None:
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.spec_hash = '{spec.spec_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def record_job_result(spec: RunSpec, result: dict[str, Any],
                      tracking_uri: str | None = None) -> dict[str, str]:
    """Write one job's result into the spec's run; returns what was recorded."""
    client = MlflowClient(tracking_uri=tracking_uri)
    state = str(result.get("state") or "")
    job_id = str(result.get("job_id") or "")
    verdict = classify(state, result.get("exit_code"), result.get("log_tail") or "")
    run = _find_run(client, spec)
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
        return {"spec_hash": spec.spec_hash, "recorded": "nothing (no run found)"}
    if run is None:  # died before MLflow: a run that says so, with the configuration
        experiment_id = ensure_experiment(spec.experiment)
        run_id = client.create_run(experiment_id, run_name=spec.run_name,
                                   tags={**spec.tags(), "outcome": "running"}).info.run_id
        params = flatten("", spec.model_dump(mode="json"))
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        current = "running"
    else:
        run_id = run.info.run_id
        current = run.data.tags.get("outcome", "")
    tags = [RunTag("job_id", job_id)] if job_id else []
    if accounting.get("source"):
        tags.append(RunTag("cost/accounting_source", str(accounting["source"])))
    recorded = "accounting"
    terminate = False
    if verdict is not None:
        outcome, reason = verdict
        # The job's own verdict stands unless the cluster knows better (a killed job left
        # "running"; a job that said "failed" was really out of memory).
        if current not in FINAL_OUTCOMES or (outcome == "oom" and current != "oom"):
            tags += [RunTag("outcome", outcome), RunTag("failure_reason", reason),
                     RunTag("job_state", state)]
            recorded = outcome
            terminate = True
    client.log_batch(run_id, metrics=metrics, tags=tags)
    if terminate:
        client.set_terminated(run_id, status="FAILED")
    return {"spec_hash": spec.spec_hash, "run_id": run_id, "recorded": recorded}
