"""End to end on CPU: tiny-apertus trained through training.job (LoRA and full), registered,
then evaluated on a small LEXam subset (the shared file when present, else generated
questions) by an evaluation job spec and the single-model CLI; everything read back from
MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from contracts.evaluation import EvalJobSpec, EvalOptions
from contracts.spec import RunSpec
from evaluation.job import run_eval_job
from training.job import run_training

SHARED_LEXAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexam" / \
    "mcq_4_choices_test.jsonl"
FAST = {"model": "tiny-apertus", "max_steps": 4, "per_device_batch": 4, "grad_accum": 1,
        "max_seq_length": 256, "data": {"source": "synthetic", "synthetic_size": 32},
        "bf16": "off", "save_steps": 100, "sweep_id": "e2e"}
N_QUESTIONS = 6


def _data() -> str:
    return str(SHARED_LEXAM) if SHARED_LEXAM.is_file() else "synthetic"


def _details(client: MlflowClient, run_id: str, tmp_path: Path) -> list[dict]:
    local = client.download_artifacts(run_id, "lexam/details.json", str(tmp_path))
    return json.loads(Path(local).read_text())


@pytest.fixture
def trained(mlflow_uri: str, tmp_path: Path):
    lora = run_training(RunSpec(**FAST, method="lora", rank=4, lr=1e-2,
                                output_dir=str(tmp_path / "runs")))
    full = run_training(RunSpec(**FAST, method="full", lr=1e-3,
                                output_dir=str(tmp_path / "runs")))
    assert lora.outcome == full.outcome == "finished" and lora.model_uri
    return lora, full


def test_trained_models_are_evaluated_into_their_runs(trained, tmp_path: Path) -> None:
    """One test, one training: the sweep mode, then the CLI on a registry adapter."""
    lora, full = trained
    options = EvalOptions(data=_data(), max_questions=N_QUESTIONS, max_new_tokens=8,
                          batch_size=4)
    spec = EvalJobSpec(model="tiny-apertus", sweep_id="e2e", options=options, dtype="float32")
    reports = run_eval_job(spec, tmp_path / "results")
    assert len(reports) == 3  # baseline, LoRA, full
    # Results are on disk, one file per run, whatever happens to MLflow afterwards.
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "results").glob("*.json")) == \
        sorted(r.run_id for r in reports)

    client = MlflowClient()
    baseline = client.search_runs(
        [client.get_experiment_by_name("lora-regret").experiment_id],
        filter_string="tags.method = 'base' and tags.sweep_id = 'e2e'")
    assert len(baseline) == 1
    base_run = baseline[0]
    assert base_run.data.tags["model"] == "tiny-apertus" and base_run.data.tags["rank"] == ""

    eval_hashes = set()
    for run_id in (base_run.info.run_id, lora.run_id, full.run_id):
        run = client.get_run(run_id)
        metrics = run.data.metrics
        for key in ("accuracy", "format_rate", "loglik_accuracy", "chance", "n_questions"):
            assert f"lexam/{key}" in metrics, (run_id, key)
        assert metrics["lexam/n_questions"] == N_QUESTIONS
        assert metrics["lexam/chance"] == pytest.approx(0.25)
        assert any(key.startswith("lexam/accuracy.lang_") for key in metrics)
        eval_hashes.add(run.data.tags["lexam_eval_hash"])
        details = _details(client, run_id, tmp_path / run_id)
        assert len(details) == N_QUESTIONS
        assert {"prompt_id", "answer_text", "parsed", "gold", "correct"} <= set(details[0])
    assert len(eval_hashes) == 1

    # The adapter really was applied: its letter scores differ from the base model's.
    base_scores = [d["loglik_scores"] for d in _details(client, base_run.info.run_id,
                                                         tmp_path / "b2")]
    lora_scores = [d["loglik_scores"] for d in _details(client, lora.run_id, tmp_path / "l2")]
    assert base_scores != lora_scores

    # Already evaluated on exactly this set: a job that skips evaluated runs does nothing.
    assert run_eval_job(spec.model_copy(update={"skip_evaluated": True}), tmp_path / "r2") == []
    # Another set (no generation) evaluates again, reusing the same baseline run.
    other = spec.model_copy(update={"options": options.model_copy(update={"generate": False}),
                                    "skip_evaluated": True})
    assert len(run_eval_job(other, tmp_path / "r3")) == 3
    assert len(client.search_runs(
        [base_run.info.experiment_id],
        filter_string="tags.method = 'base' and tags.sweep_id = 'e2e'")) == 1

    # The single-model CLI fetches the adapter from the registry and logs into its run.
    out = tmp_path / "adapter.json"
    done = subprocess.run(
        [sys.executable, "-m", "evaluation", "--model", "tiny-apertus", "--adapter",
         lora.model_uri, "--data", _data(), "--max-questions", "3", "--max-new-tokens", "4",
         "--dtype", "float32", "--output-json", str(out)],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["run_id"] == lora.run_id and payload["adapter"] == lora.model_uri
    run = MlflowClient().get_run(lora.run_id)
    assert run.data.metrics["lexam/n_questions"] == 3
    assert run.data.tags["lexam_eval_hash"] == payload["eval_hash"]
