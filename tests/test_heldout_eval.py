"""A tiny sweep for real: tiny-apertus trained with held-out cases and kept checkpoints,
evaluated by an evaluation job spec (LEXam + held-out SJP at every checkpoint), reported,
and the recommended model marked in the registry; everything read back from MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from contracts.evaluation import EvalJobSpec, EvalOptions
from contracts.spec import RunSpec
from evaluation.job import run_eval_job
from evaluation.sjp import SJP_DETAILS
from reporting.config import ReportConfig
from reporting.fetch import load_sweep
from reporting.findings import Candidate
from reporting.pipeline import generate_sweep
from reporting.recommend import mark_candidate
from tracking.splits import read_split
from training.job import run_training
from training.split import split_cases

SWEEP = "heldout-e2e"
FAST = {"model": "tiny-apertus", "max_steps": 8, "per_device_batch": 4, "grad_accum": 1,
        "max_seq_length": 256, "bf16": "off", "save_steps": 4, "checkpoint_eval_every": 1,
        "sweep_id": SWEEP,
        "data": {"source": "synthetic", "synthetic_size": 48, "heldout_fraction": 0.25}}
QUESTIONS = 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(module_mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("heldout")
    lora_spec = RunSpec(**FAST, method="lora", rank=4, lr=1e-2, output_dir=str(folder / "runs"))
    full_spec = RunSpec(**FAST, method="full", lr=1e-3, output_dir=str(folder / "runs"))
    lora, full = run_training(lora_spec), run_training(full_spec)
    assert lora.outcome == full.outcome == "finished"
    spec = EvalJobSpec(model="tiny-apertus", sweep_id=SWEEP, checkpoints=True, dtype="float32",
                       options=EvalOptions(data="synthetic", max_questions=QUESTIONS,
                                           max_new_tokens=4, batch_size=4))
    reports = run_eval_job(spec, folder / "results")
    return {"lora": (lora_spec, lora), "full": (full_spec, full), "reports": reports,
            "folder": folder}


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _baseline(client: MlflowClient):
    experiment = client.get_experiment_by_name("lora-regret").experiment_id
    found = client.search_runs([experiment], f"tags.method = 'base' and tags.sweep_id = '{SWEEP}'")
    assert len(found) == 1
    return found[0]


def test_checkpoint_metrics_land_at_their_steps(evaluated) -> None:
    client = MlflowClient()
    reports = {r.run_id: r for r in evaluated["reports"]}
    for method in ("lora", "full"):
        _, outcome = evaluated[method]
        run = client.get_run(outcome.run_id)
        assert run.data.tags["checkpoint_snapshots"].endswith("snapshots")
        # The checkpoint at step 4 and the final model at step 8, for every metric.
        for key in ("lexam/accuracy", "lexam/loglik_accuracy", "lexam/n_questions",
                    "lexam/loglik_accuracy_delta", "lexam/loglik_accuracy_delta_high",
                    "sjp/macro_f1", "sjp/accuracy", "sjp/loss", "sjp/majority_macro_f1",
                    "eval/loss"):
            assert sorted(_history(client, outcome.run_id, key)) == [4, 8], (method, key)
        # MLflow's latest value stays the final model's, not the checkpoint's.
        final = reports[outcome.run_id].metrics
        for key in ("lexam/accuracy", "lexam/loglik_accuracy"):
            assert run.data.metrics[key] == pytest.approx(final[key])
            assert _history(client, outcome.run_id, key)[8] == pytest.approx(final[key])
        local = client.download_artifacts(outcome.run_id, "lexam/steps/step-4.json",
                                          str(evaluated["folder"] / method))
        steps = json.loads(Path(local).read_text())
        assert steps["step"] == 4 and len(steps["results"]) == QUESTIONS
        # The difference to the base model comes with its interval.
        delta = run.data.metrics
        assert delta["lexam/loglik_accuracy_delta_low"] <= delta["lexam/loglik_accuracy_delta"] \
            <= delta["lexam/loglik_accuracy_delta_high"]
    # The checkpoint really is another model: its SJP log-likelihoods differ.
    lora_run = evaluated["lora"][1].run_id
    sjp_loss = _history(client, lora_run, "sjp/loss")
    assert sjp_loss[4] != sjp_loss[8]
    base = _baseline(client)
    assert sorted(_history(client, base.info.run_id, "sjp/macro_f1")) == [0]
    assert base.data.tags["sjp_split_hash"] == client.get_run(lora_run).data.tags["sjp_split_hash"]


def test_no_training_case_is_ever_scored(evaluated) -> None:
    client = MlflowClient()
    for method in ("lora", "full"):
        spec, outcome = evaluated[method]
        record = read_split(client, outcome.run_id)
        assert record is not None and record.method == "stratified"
        # The record names exactly the cases the run trained on ...
        trained = [str(row["id"]) for row in split_cases(spec.data, seed=spec.seed).train]
        assert record.train_ids == trained
        assert set(record.train_ids).isdisjoint(record.heldout_ids)
        # ... and what was scored is exactly the held-out side.
        local = client.download_artifacts(outcome.run_id, SJP_DETAILS,
                                          str(evaluated["folder"] / f"sjp-{method}"))
        scored = [row["case_id"] for row in json.loads(Path(local).read_text())]
        assert sorted(scored) == sorted(record.heldout_ids)
        assert set(scored).isdisjoint(record.train_ids)
        assert client.get_run(outcome.run_id).data.metrics["sjp/n_cases"] == record.n_heldout
    base = _baseline(client)
    local = client.download_artifacts(base.info.run_id, SJP_DETAILS,
                                      str(evaluated["folder"] / "sjp-base"))
    assert sorted(row["case_id"] for row in json.loads(Path(local).read_text())) == \
        sorted(record.heldout_ids)


def test_the_report_recommends_and_marks_a_loadable_model(evaluated, tmp_path: Path) -> None:
    """Real runs through the report (both figures, the recommendation, the alias), then a
    checkpoint recommendation registered by reference: both aliases load."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.models import resolve_model_path
    from training.registry import fetch_adapter, fetch_checkpoint

    client = MlflowClient()
    config = ReportConfig(sweep_ids=(SWEEP,), output_dir=tmp_path / "reports",
                          retention_margin=1.0, retention_metric="loglik_accuracy")
    report = generate_sweep(client, config, SWEEP)
    names = {p.name for p in report.files}
    assert {"forgetting_curves.png", "task_vs_retention.png"} <= names
    recommendation = report.findings.models[0].heldout.recommendation
    best = recommendation.best
    assert best is not None and recommendation.n_candidates == 4  # 2 runs x (step 4, final)
    alias = recommendation.registry
    assert alias is not None and alias.run_id == best.best_run_id
    version = client.get_model_version_by_alias(alias.name, "recommended")
    assert str(version.version) == alias.version
    findings = json.loads((tmp_path / "reports" / SWEEP / "findings.json").read_text())
    assert findings["models"][0]["heldout"]["recommendation"]["best"]["step"] == best.step

    # A recommended LoRA checkpoint: a version by reference to the snapshot, which loads.
    lora = evaluated["lora"][1]
    runs = load_sweep(client, SWEEP).runs
    checkpoint = Candidate(method="lora", rank=4, lr=1e-2, step=4, final=False,
                           sjp_macro_f1=0.5, sjp_macro_f1_std=None, sjp_accuracy=None,
                           lexam_accuracy=0.2, lexam_accuracy_std=None, retention=0.0,
                           final_loss=None, n_seeds=1, run_ids=[lora.run_id],
                           best_run_id=lora.run_id)
    marked = mark_candidate(client, "tiny-apertus", checkpoint, runs, "recommended", SWEEP)
    assert marked.source == "checkpoint" and marked.name == "lora-regret-tiny-apertus-lora"
    again = mark_candidate(client, "tiny-apertus", checkpoint, runs, "recommended", SWEEP)
    assert again.version == marked.version  # registered once
    folder = fetch_adapter("models:/lora-regret-tiny-apertus-lora@recommended", tmp_path / "a")
    assert folder.name == "step-4" and (folder / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-apertus"))
    PeftModel.from_pretrained(base, str(folder))
    # Only one registered model of the base model carries the alias.
    full_versions = client.search_model_versions("name = 'lora-regret-tiny-apertus-full'")
    assert all("recommended" not in (v.aliases or []) for v in full_versions)
    if alias.name.endswith("-full"):  # a whole model: by reference to its folder
        assert (fetch_checkpoint(f"models:/{alias.name}/{alias.version}") / "config.json"
                ).is_file()
