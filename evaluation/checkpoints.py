"""Checkpoints of a run evaluated next to its final model: the forgetting curve.

A training run that kept snapshots (``RunSpec.checkpoint_eval_every``; tag
``checkpoint_snapshots`` names the folder, ``training.snapshots`` writes it) gets every
snapshot evaluated like its final model: LoRA snapshots are adapters and join the base
model's adapter list (one vLLM server, or one in-process model, for all of them); full
fine-tune snapshots are whole models, each loaded on its own. Their metrics are logged as
step metrics of the run (``lexam/accuracy`` at step 100, ...); the final model's metrics
sit at the run's last step, so MLflow's latest value of each metric stays the final one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from contracts.names import TAG_SNAPSHOTS
from evaluation.metrics import finite
from training.snapshots import list_snapshots

STEP_DETAILS = "lexam/steps/step-{step}.json"


def final_step(run: Any) -> int:
    """The optimizer step of a run's final model (0 for a run that logged none)."""
    value = run.data.metrics.get("train/global_steps")
    return int(value) if value else 0


def snapshots_of(run: Any) -> list[tuple[int, Path]]:
    """(step, folder) of the run's kept snapshots before its final step (the final model
    itself is evaluated as the run's model)."""
    folder = run.data.tags.get(TAG_SNAPSHOTS)
    if not folder:
        return []
    last = final_step(run)
    return [(step, path) for step, path in list_snapshots(Path(folder))
            if not last or step < last]


def log_checkpoint_report(client: Any, run_id: str, report: Any, step: int) -> None:
    """A checkpoint's ``lexam/*`` metrics at its step, and which questions it got right
    (``lexam/steps/step-N.json``); the run's tags and summary stay the final model's."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, step) for key, value in finite(report.metrics)]
    client.log_batch(run_id, metrics=metrics)
    rows = [{"prompt_id": r.prompt_id, "correct": r.correct, "parsed": r.parsed,
             "loglik_correct": r.loglik_correct} for r in report.results]
    client.log_text(run_id, json.dumps({"step": step, "eval_hash": report.eval_hash,
                                        "results": rows}), STEP_DETAILS.format(step=step))
