"""Evaluation results into MLflow, and where models and runs come from.

- ``lexam/*`` metrics go onto the training run that produced the model (found from the
  registered version's ``run_id`` tag), or onto a baseline run for an untouched base model
  (tags ``method=base``, ``rank=""``, one per sweep and model);
- per-question details are artifacts ``lexam/details.json`` and ``lexam/details.csv``,
  the summary ``lexam/summary.json``; the tag ``lexam_eval_hash`` names the evaluation set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from contracts.names import DEFAULT_EXPERIMENT
from evaluation.metrics import finite
from evaluation.runner import EvalReport
from tracking.store import ensure_experiment


def tracking_enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def baseline_run(client: MlflowClient, model: str, sweep_id: str = "adhoc",
                 experiment: str = DEFAULT_EXPERIMENT) -> str:
    """The baseline run of an untouched base model for a sweep, created on first use."""
    experiment_id = ensure_experiment(client, experiment)
    found = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.sweep_id = '{sweep_id}' and tags.model = '{model}' "
                       "and tags.method = 'base'"),
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=f"{model}-base",
        tags={"sweep_id": sweep_id, "model": model, "method": "base", "rank": "",
              "lr": "", "seed": "", "outcome": "finished"},
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def run_of_model_uri(client: MlflowClient, model_uri: str) -> str | None:
    """The training run behind ``models:/NAME/VERSION`` (tag ``run_id`` or the version's)."""
    name, version = parse_model_uri(model_uri)
    model_version = client.get_model_version(name, version)
    return model_version.tags.get("run_id") or model_version.run_id or None


def parse_model_uri(model_uri: str) -> tuple[str, str]:
    parts = model_uri.removeprefix("models:/").split("/")
    if not model_uri.startswith("models:/") or len(parts) != 2 or not all(parts):
        raise ValueError(f"adapter: {model_uri!r} is not of the form models:/NAME/VERSION")
    return parts[0], parts[1]


def _details_csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    fields = ["prompt_id", "language", "area", "n_choices", "gold", "parsed", "correct",
              "loglik_choice", "loglik_correct", "answer_text"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def log_report(client: MlflowClient, run_id: str, report: EvalReport,
               step: int | None = None) -> None:
    """Metrics (one batch), tags and the details artifacts onto ``run_id``.

    The metrics are logged at ``step``, by default the run's last training step (0 for a
    baseline): its checkpoints' metrics, logged at their own earlier steps, then never
    become MLflow's latest value of a metric.
    """
    if step is None:
        step = int(client.get_run(run_id).data.metrics.get("train/global_steps") or 0)
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, step) for key, value in finite(report.metrics)]
    tags = [
        RunTag("lexam_eval_hash", report.eval_hash),
        RunTag("lexam_data", report.data),
        RunTag("lexam_backend", report.backend),
        RunTag("lexam_scorer", report.scorer),
        RunTag("lexam_options", json.dumps(report.options, sort_keys=True)),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    details = report.details()
    client.log_text(run_id, json.dumps(details, indent=1, ensure_ascii=False),
                    "lexam/details.json")
    client.log_text(run_id, _details_csv(details), "lexam/details.csv")
    summary = {**report.summary_dict(), "run_id": run_id}
    client.log_text(run_id, json.dumps(summary, indent=2, default=str), "lexam/summary.json")
