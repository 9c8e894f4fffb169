"""A sweep's MLflow runs as tidy tables: one row per run, one row per logged step.

Runs are found by tags (docs/CONVENTIONS.md): ``sweep_id`` names the sweep, ``method``
is ``lora``, ``full`` or ``base`` (an untouched base model's LEXam baseline). Report runs
(tag ``kind=report``) are never part of a sweep. Summary metrics come from the run
search itself (their latest values); step metrics come through ``history`` and the
``cache``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from reporting.cache import HistoryCache
from reporting.config import NothingToReport, check_sweep_id
from reporting.history import fetch_histories

log = logging.getLogger(__name__)

HISTORY_KEYS = ("train/loss", "train/learning_rate", "train/grad_norm",
                "train/tokens_per_second")
# Evaluations over training: each checkpoint's metrics at its step, the final model's at
# the last step (docs/CONVENTIONS.md).
CURVE_KEYS = ("lexam/accuracy", "lexam/format_rate", "lexam/loglik_accuracy",
              "lexam/accuracy_delta", "lexam/accuracy_delta_low", "lexam/accuracy_delta_high",
              "lexam/loglik_accuracy_delta", "lexam/loglik_accuracy_delta_low",
              "lexam/loglik_accuracy_delta_high", "lexam/n_questions", "sjp/macro_f1",
              "sjp/accuracy", "sjp/loss", "eval/loss")
SUMMARY_KEYS = ("train/final_loss", "model/trainable_params", "model/total_params",
                "model/trainable_fraction", "lexam/accuracy", "lexam/format_rate",
                "lexam/parsed_accuracy", "lexam/loglik_accuracy", "lexam/chance",
                "lexam/n_questions",
                # engineering: throughput, time, memory and cost (docs/CONVENTIONS.md)
                "train/world_size", "train/runtime_s", "train/time_to_first_step_s",
                "train/samples_per_second_mean", "cost/gpu_hours", "cost/gpu_hours_accounted",
                "memory/peak_accelerator_mb", "memory/peak_host_mb",
                # the memory plan made before submitting (contracts.memory)
                "memory/plan_total_gb", "memory/plan_gpu_memory_gb",
                # held-out SJP and the distance to the base model (docs/CONVENTIONS.md)
                "train/global_steps", "sjp/macro_f1", "sjp/accuracy", "sjp/loss",
                "sjp/majority_macro_f1", "sjp/majority_accuracy", "sjp/n_cases",
                "lexam/accuracy_delta", "lexam/accuracy_delta_low", "lexam/accuracy_delta_high",
                "lexam/loglik_accuracy_delta", "lexam/loglik_accuracy_delta_low",
                "lexam/loglik_accuracy_delta_high", "eval/loss")
LAYOUT_TAGS = ("zero_stage", "nodes", "gpus_per_node", "failure_reason")
# What the sweep DAG's record task says about a run that did not finish.
JOB_TAGS = ("job_state", "job_id")
# Where a run's model and checkpoints are, and which held-out cases it was scored on.
MODEL_TAGS = ("registered_model_uri", "checkpoint_path", "checkpoint_snapshots",
              "sjp_split_hash")
OUTCOMES = ("running", "finished", "diverged", "oom", "failed")
STATUS_OUTCOME = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "failed",
                  "RUNNING": "running", "SCHEDULED": "running"}
REPORT_KIND = "report"


@dataclass
class SweepData:
    """Everything the analysis needs about one sweep."""

    sweep_id: str
    runs: pd.DataFrame  # one row per training run (method lora|full)
    baselines: pd.DataFrame  # one row per base-model evaluation run (method base)
    history: pd.DataFrame  # run_id, key, step, value
    experiment_id: str | None
    cache_hits: int = 0
    fetched: int = 0


def experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The named experiment's id, or every active experiment's when none is named."""
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise NothingToReport(f"experiment: no MLflow experiment named {experiment!r}")
        return [found.experiment_id]
    return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]


def _search(client: MlflowClient, ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def list_sweep_ids(client: MlflowClient, ids: list[str]) -> list[str]:
    """Sweep ids of all training runs in the experiments, sorted."""
    found = set()
    for run in _search(client, ids, "tags.sweep_id != ''"):
        tags = run.data.tags
        if tags.get("kind") != REPORT_KIND and tags.get("method") in ("lora", "full"):
            found.add(tags["sweep_id"])
    return sorted(found)


def _outcome(run: Run) -> str:
    outcome = run.data.tags.get("outcome", "")
    if outcome in OUTCOMES:
        return outcome
    return STATUS_OUTCOME.get(run.info.status, "failed")


def run_fingerprint(run: Run, keys: Iterable[str] = (*HISTORY_KEYS, *CURVE_KEYS)) -> str:
    """What changes whenever a run logs something new (the history cache's key).

    MLflow keeps no "last updated" time per run, but the search results carry, for each
    metric, its latest step and timestamp; together with status, end time and the
    outcome tag they change whenever a job logs a step, resumes or ends.
    """
    latest = {m.key: (m.step, m.timestamp) for m in getattr(run.data, "_metric_objs", [])}
    parts = [run.info.status, str(run.info.end_time), run.data.tags.get("outcome", "")]
    parts += [f"{key}={latest.get(key)}" for key in keys]
    return "|".join(parts)


def _last_step(run: Run) -> int:
    steps = [m.step for m in getattr(run.data, "_metric_objs", []) if m.key in HISTORY_KEYS]
    return max(steps, default=0)


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: identity tags parsed to numbers, outcome and summary metrics."""
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        row = {
            "run_id": run.info.run_id, "run_name": run.info.run_name,
            "experiment_id": run.info.experiment_id, "sweep_id": tags.get("sweep_id", ""),
            "model": tags.get("model", ""), "method": tags.get("method", ""),
            "lr": tags.get("lr", ""), "rank": tags.get("rank", ""), "seed": tags.get("seed", "0"),
            "outcome": _outcome(run), "status": run.info.status,
            "start_time": run.info.start_time, "end_time": run.info.end_time,
            "last_step": _last_step(run),
        }
        row.update({tag: tags.get(tag, "") for tag in (*LAYOUT_TAGS, *JOB_TAGS, *MODEL_TAGS)})
        row.update({key: metrics.get(key, np.nan) for key in SUMMARY_KEYS})
        rows.append(row)
    columns = ["run_id", "run_name", "experiment_id", "sweep_id", "model", "method", "lr",
               "rank", "seed", "outcome", "status", "start_time", "end_time", "last_step",
               *LAYOUT_TAGS, *JOB_TAGS, *MODEL_TAGS, *SUMMARY_KEYS]
    frame = pd.DataFrame(rows, columns=columns)
    frame["lr"] = pd.to_numeric(frame["lr"], errors="coerce")
    frame["rank"] = pd.to_numeric(frame["rank"], errors="coerce").astype("Int64")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    for tag in ("zero_stage", "nodes", "gpus_per_node"):
        frame[tag] = pd.to_numeric(frame[tag], errors="coerce").astype("Int64")
    for key in SUMMARY_KEYS:
        frame[key] = frame[key].astype(float)
    return frame


def _baselines(client: MlflowClient, ids: list[str], sweep_id: str, models: set[str],
               in_sweep: list[Run]) -> list[Run]:
    """The sweep's own baseline runs; for models without one, the latest from any sweep."""
    chosen = {r.data.tags.get("model"): r for r in in_sweep
              if r.data.tags.get("method") == "base"}
    missing = models - set(chosen)
    if missing:
        for run in sorted(_search(client, ids, "tags.method = 'base'"),
                          key=lambda r: r.info.start_time or 0):
            model = run.data.tags.get("model")
            if model in missing and "lexam/accuracy" in run.data.metrics:
                chosen[model] = run  # later runs overwrite earlier ones
    return list(chosen.values())


def load_sweep(
    client: MlflowClient,
    sweep_id: str,
    *,
    experiment: str | None = None,
    cache: HistoryCache | None = None,
    backend: str = "auto",
) -> SweepData:
    """Runs, baselines and step histories of one sweep, histories from the cache when fresh."""
    check_sweep_id(sweep_id)
    ids = experiment_ids(client, experiment)
    found = _search(client, ids, f"tags.sweep_id = '{sweep_id}'")
    found = [r for r in found if r.data.tags.get("kind") != REPORT_KIND]
    training = [r for r in found if r.data.tags.get("method") in ("lora", "full")]
    if not training:
        raise NothingToReport(f"sweep_id: no training runs tagged sweep_id={sweep_id!r} in MLflow")
    models = {r.data.tags.get("model", "") for r in training}
    baselines = _baselines(client, ids, sweep_id, models, found)
    fingerprints = {r.info.run_id: run_fingerprint(r) for r in training}
    cached = None
    missing = list(fingerprints)
    if cache is not None:
        cached, missing = cache.load(fingerprints)
    last_steps = {r.info.run_id: _last_step(r) for r in training}
    log.info("sweep %s: %d runs, %d histories cached, %d to fetch", sweep_id, len(training),
             len(fingerprints) - len(missing), len(missing))
    fresh = fetch_histories(client, missing, (*HISTORY_KEYS, *CURVE_KEYS), backend=backend,
                            last_steps=last_steps)
    if cache is not None and missing:
        cache.save(fresh, {run_id: fingerprints[run_id] for run_id in missing})
    history = fresh if cached is None or cached.empty else pd.concat([cached, fresh],
                                                                      ignore_index=True)
    counts = pd.Series([r.info.experiment_id for r in training]).value_counts()
    return SweepData(
        sweep_id=sweep_id, runs=runs_table(training), baselines=runs_table(baselines),
        history=history.sort_values(["run_id", "key", "step"]).reset_index(drop=True),
        experiment_id=str(counts.index[0]), cache_hits=len(fingerprints) - len(missing),
        fetched=len(missing),
    )
