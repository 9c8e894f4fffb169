"""Seed-shaped synthetic sweeps logged into a real MLflow store.

The reporting tests and benchmarks need a sweep whose answers are known. This module
logs runs with the same tags, metric names and history length as the training job
(docs/CONVENTIONS.md), shaped after the reference study: the best final losses are
LoRA 8B 0.717 at 1e-3, full 8B 0.620 at 1e-4, LoRA 70B 0.621 at 1e-3 and full 70B 0.582
at 1e-5, and LoRA's best LR does not depend on the rank. LEXam metrics follow the
study's baselines (8B 27.1%, 70B 33.1%) and post-fine-tuning accuracies.

Each history is a noisy exponential decay whose last ``FINAL_LOSS_WINDOW`` values are
shifted to average exactly to the target, so ``train/final_loss`` (their mean) is the
target to floating-point precision.

With ``checkpoints=True`` every run also has what the evaluation logs over training
(docs/CONVENTIONS.md): at checkpoint steps 100, 200, 300, 400 and the final step 467,
``lexam/*`` (accuracy moving from the base model's level to the run's final accuracy, the
faster the higher the LR), ``lexam/accuracy_delta*`` (difference to the base model with a
95% interval), held-out ``sjp/*`` (macro-F1 rising from the base model's 0.45) and
``eval/loss``; baselines get their held-out SJP numbers. The SJP numbers are invented
(the seed study measured none), shaped so that the lowest training loss is not the best
held-out predictor: LoRA at 1e-3 fits SJP best in loss, but 1e-4 predicts best.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from contracts.presets import load_presets
from contracts.spec import RunSpec
from contracts.sweep import SweepSpec, load_named_sweep

FINAL_LOSS_WINDOW = 10
STEPS = 467
RANKS_8B = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Final loss of the best rank for each (model, method, lr).
TARGET_LOSS: dict[tuple[str, str, float], float] = {
    ("apertus-8b", "lora", 1e-5): 0.950,
    ("apertus-8b", "lora", 1e-4): 0.790,
    ("apertus-8b", "lora", 1e-3): 0.717,
    ("apertus-8b", "full", 1e-5): 0.668,
    ("apertus-8b", "full", 1e-4): 0.620,
    ("apertus-8b", "full", 1e-3): 0.735,
    ("apertus-70b", "lora", 1e-5): 0.705,
    ("apertus-70b", "lora", 1e-4): 0.650,
    ("apertus-70b", "lora", 1e-3): 0.621,
    ("apertus-70b", "full", 1e-5): 0.582,
    ("apertus-70b", "full", 1e-4): 0.610,
    ("apertus-70b", "full", 1e-3): 0.690,
}
# Low ranks lack capacity; ranks >= 32 differ only by a small fixed jitter (rank 128 best).
RANK_PENALTY = {1: 0.05, 2: 0.04, 4: 0.03, 8: 0.02, 16: 0.01,
                32: 0.002, 64: 0.001, 128: 0.0, 256: 0.0015, 512: 0.003}
INITIAL_LOSS = {"apertus-8b": 2.0, "apertus-70b": 1.8}
DECAY_STEPS = {1e-5: 150.0, 1e-4: 60.0, 1e-3: 25.0, 1e-2: 10.0}

BASELINE = {"apertus-8b": 0.271, "apertus-70b": 0.331}
BASELINE_LOGLIK = {"apertus-8b": 0.36, "apertus-70b": 0.42}
# LEXam accuracy after fine-tuning as (lowest rank, highest rank) per (model, method, lr).
ACCURACY = {
    ("apertus-8b", "lora", 1e-5): (0.280, 0.260),
    ("apertus-8b", "lora", 1e-4): (0.162, 0.077),
    ("apertus-8b", "lora", 1e-3): (0.043, 0.000),
    ("apertus-8b", "full", 1e-5): (0.259, 0.259),
    ("apertus-8b", "full", 1e-4): (0.050, 0.050),
    ("apertus-8b", "full", 1e-3): (0.000, 0.000),
    ("apertus-70b", "lora", 1e-5): (0.306, 0.294),
    ("apertus-70b", "lora", 1e-4): (0.150, 0.100),
    ("apertus-70b", "lora", 1e-3): (0.000, 0.000),
    ("apertus-70b", "full", 1e-5): (0.300, 0.300),
    ("apertus-70b", "full", 1e-4): (0.080, 0.080),
    ("apertus-70b", "full", 1e-3): (0.000, 0.000),
}
LOGLIK_DROP = {1e-5: 0.01, 1e-4: 0.04, 1e-3: 0.08}
N_QUESTIONS = 1660

# Over training (checkpoints=True).
CHECKPOINT_STEPS = (100, 200, 300, 400)
FORGET_STEPS = {1e-5: 400.0, 1e-4: 150.0, 1e-3: 30.0}  # how fast LEXam moves to its final
LEARN_STEPS = {1e-5: 250.0, 1e-4: 90.0, 1e-3: 30.0}  # how fast SJP moves to its final
SJP_BASE = {"apertus-8b": 0.45, "apertus-70b": 0.50}
SJP_MAJORITY = 0.40  # macro-F1 of always predicting dismissal
# Final held-out macro-F1 of the best rank per (model, method, lr).
SJP_F1 = {
    ("apertus-8b", "lora", 1e-5): 0.600, ("apertus-8b", "lora", 1e-4): 0.680,
    ("apertus-8b", "lora", 1e-3): 0.640, ("apertus-8b", "full", 1e-5): 0.640,
    ("apertus-8b", "full", 1e-4): 0.660, ("apertus-8b", "full", 1e-3): 0.550,
    ("apertus-70b", "lora", 1e-5): 0.650, ("apertus-70b", "lora", 1e-4): 0.700,
    ("apertus-70b", "lora", 1e-3): 0.660, ("apertus-70b", "full", 1e-5): 0.690,
    ("apertus-70b", "full", 1e-4): 0.680, ("apertus-70b", "full", 1e-3): 0.560,
}
SJP_RANK_PENALTY = {1: 0.04, 2: 0.03, 4: 0.02, 8: 0.01, 16: 0.005}  # higher ranks: 0


@dataclass(frozen=True)
class LoggedSweep:
    """What was logged: the sweep id, experiment and run ids by run name."""

    sweep_id: str
    experiment_id: str
    run_ids: dict[str, str]


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def target_loss(spec: RunSpec, seed_sd: float = 0.0) -> float:
    """The run's final loss: its (model, method, lr) optimum plus the rank's penalty."""
    base = TARGET_LOSS[(spec.model, spec.method, spec.lr)]
    penalty = RANK_PENALTY[spec.rank] if spec.rank else 0.0
    noise = seed_sd * float(_rng("seed", spec.spec_hash).standard_normal()) if spec.seed else 0.0
    return base + penalty + noise


def loss_history(spec: RunSpec, target: float, steps: int = STEPS) -> np.ndarray:
    """A noisy decay from the model's initial loss whose last window averages to target."""
    rng = _rng("history", spec.spec_hash)
    step = np.arange(1, steps + 1, dtype=float)
    decay = (INITIAL_LOSS[spec.model] - target) * np.exp(-step / DECAY_STEPS[spec.lr])
    noise = rng.normal(0.0, 0.02, steps)
    # Shift the whole curve (not just its tail) so that it stays continuous.
    curve = target + decay + noise
    return curve - curve[-FINAL_LOSS_WINDOW:].mean() + target


def _rank_position(spec: RunSpec) -> float:
    if not spec.rank:
        return 0.0
    return math.log2(spec.rank) / math.log2(512)


def lexam_metrics(model: str, method: str, lr: float | None, position: float) -> dict[str, float]:
    """LEXam metrics shaped after the study: accuracy and answer format fade at high LR."""
    if method == "base":
        accuracy, loglik = BASELINE[model], BASELINE_LOGLIK[model]
    else:
        assert lr is not None
        low, high = ACCURACY[(model, method, lr)]
        accuracy = low + (high - low) * position
        loglik = BASELINE_LOGLIK[model] - LOGLIK_DROP[lr]
    format_rate = min(0.97, accuracy / 0.28 * 0.96)
    return {
        "lexam/accuracy": accuracy,
        "lexam/format_rate": format_rate,
        "lexam/parsed_accuracy": accuracy / format_rate if format_rate else 0.0,
        "lexam/loglik_accuracy": loglik,
        "lexam/chance": 0.25,
        "lexam/n_questions": float(N_QUESTIONS),
    }


def _towards(start: float, end: float, step: int, steps: int, tau: float) -> float:
    """From ``start`` at step 0 to exactly ``end`` at ``steps`` (exponential approach)."""
    return start + (end - start) * (1 - math.exp(-step / tau)) / (1 - math.exp(-steps / tau))


def sjp_macro_f1(spec: RunSpec, seed_sd: float = 0.0) -> float:
    """The run's final held-out macro-F1 (plus seed noise for seeds other than 0)."""
    value = SJP_F1[(spec.model, spec.method, spec.lr)] - SJP_RANK_PENALTY.get(spec.rank or 0, 0)
    if spec.seed:
        value += seed_sd * float(_rng("sjp", spec.spec_hash).standard_normal())
    return value


def step_metrics(spec: RunSpec, step: int, steps: int, seed_sd: float = 0.0,
                 losses: np.ndarray | None = None) -> dict[str, float]:
    """Everything the evaluation logs at one step of a run (checkpoint or final)."""
    base = BASELINE[spec.model]
    final = lexam_metrics(spec.model, spec.method, spec.lr, _rank_position(spec))
    accuracy = _towards(base, final["lexam/accuracy"], step, steps, FORGET_STEPS[spec.lr])
    lexam = lexam_metrics(spec.model, "base", None, 0)
    lexam.update({"lexam/accuracy": accuracy,
                  "lexam/format_rate": min(0.97, accuracy / 0.28 * 0.96),
                  "lexam/loglik_accuracy": _towards(lexam["lexam/loglik_accuracy"],
                                                    final["lexam/loglik_accuracy"], step, steps,
                                                    FORGET_STEPS[spec.lr])})
    delta = accuracy - base
    half = 1.96 * 0.8 * math.sqrt((accuracy * (1 - accuracy) + base * (1 - base)) / N_QUESTIONS)
    f1 = _towards(SJP_BASE[spec.model], sjp_macro_f1(spec, seed_sd), step, steps,
                  LEARN_STEPS[spec.lr])
    metrics = {**lexam, "lexam/accuracy_delta": delta, "lexam/accuracy_delta_low": delta - half,
               "lexam/accuracy_delta_high": delta + half, **_sjp(f1)}
    if losses is not None:
        metrics["eval/loss"] = float(losses[min(step, len(losses)) - 1]) + 0.05
    return metrics


def _sjp(f1: float) -> dict[str, float]:
    return {"sjp/macro_f1": f1, "sjp/accuracy": f1 + 0.04, "sjp/loss": 1.2 - f1,
            "sjp/majority_macro_f1": SJP_MAJORITY, "sjp/majority_accuracy": 0.67,
            "sjp/n_cases": 200.0}


def _param_metrics(spec: RunSpec) -> dict[str, float]:
    """Parameter counts as the training job logs them: LoRA's fraction is measured
    against the base model's size (``model/total_params`` is the base model's count)."""
    preset = load_presets()[spec.model]
    assert preset.total_params and preset.lora_params_per_rank
    if spec.method == "lora":
        trainable = spec.rank * preset.lora_params_per_rank
        total = preset.total_params
    else:
        trainable = total = preset.total_params
    return {"model/trainable_params": float(trainable), "model/total_params": float(total),
            "model/trainable_fraction": trainable / total}


def _log_batched(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def _step_metrics(losses: np.ndarray, lr: float, t0: int) -> list[Metric]:
    metrics = []
    for index, loss in enumerate(losses):
        step, ts = index + 1, t0 + index * 1000
        metrics += [
            Metric("train/loss", float(loss), ts, step),
            Metric("train/learning_rate", lr, ts, step),
            Metric("train/grad_norm", float(1.0 + 0.5 * math.sin(index / 7)), ts, step),
            Metric("train/tokens_per_second", 2000.0 + index % 13, ts, step),
        ]
    return metrics


def log_run(
    client: MlflowClient,
    experiment_id: str,
    spec: RunSpec,
    *,
    steps: int = STEPS,
    seed_sd: float = 0.0,
    with_lexam: bool = True,
    checkpoints: bool = False,
    register: bool = False,
) -> str:
    """Log one finished training run (histories, summary and LEXam metrics); with
    ``checkpoints`` its evaluations over training, with ``register`` a registry version."""
    target = target_loss(spec, seed_sd)
    losses = loss_history(spec, target, steps)
    tags = {**spec.tags(), "job_id": f"synthetic-{spec.spec_hash[:6]}", "outcome": "finished"}
    run = client.create_run(experiment_id, run_name=spec.run_name,
                            tags=tags, start_time=int(time.time() * 1000))
    run_id = run.info.run_id
    t0 = int(time.time() * 1000)
    metrics = _step_metrics(losses, spec.lr, t0)
    ts = t0 + steps * 1000
    summary = {"train/final_loss": float(np.mean(losses[-FINAL_LOSS_WINDOW:])),
               "train/global_steps": float(steps), **_param_metrics(spec)}
    if with_lexam and not checkpoints:
        summary.update(lexam_metrics(spec.model, spec.method, spec.lr, _rank_position(spec)))
    metrics += [Metric(key, value, ts, 0) for key, value in summary.items()]
    if checkpoints:  # as the evaluation logs them: each at its step, the final at the last
        for step in (*[s for s in CHECKPOINT_STEPS if s < steps], steps):
            metrics += [Metric(key, value, ts + step, step) for key, value in
                        step_metrics(spec, step, steps, seed_sd, losses).items()]
        client.set_tag(run_id, "sjp_split_hash", "synthetic-split")
        client.set_tag(run_id, "checkpoint_snapshots",
                       f"/synthetic/runs/{spec.run_name}-{spec.spec_hash}/snapshots")
    _log_batched(client, run_id, metrics)
    if register:
        client.set_tag(run_id, "registered_model_uri", register_version(client, spec, run_id))
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def register_version(client: MlflowClient, spec: RunSpec, run_id: str) -> str:
    """A registry version for the run, as the training job makes one (the source is a small
    stand-in artifact: there are no weights)."""
    from mlflow.exceptions import MlflowException

    name = f"lora-regret-{spec.model}-{spec.method}"
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    client.log_text(run_id, "synthetic: no weights", "adapter/README.txt")
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/adapter", run_id=run_id,
        tags={"run_id": run_id, "spec_hash": spec.spec_hash, "model": spec.model,
              "method": spec.method, "lr": f"{spec.lr:g}", "rank": str(spec.rank or ""),
              "seed": str(spec.seed)})
    return f"models:/{name}/{version.version}"


def log_broken_runs(client: MlflowClient, experiment_id: str, sweep_id: str) -> dict[str, str]:
    """A diverged and a failed run at LR 1e-2 whose last losses look tempting (0.3, 0.5):
    the analysis must show them and keep them out of every optimum. The failed one has
    no ``train/final_loss`` (its final loss comes from its history)."""
    run_ids = {}
    cases = [
        ("full", None, "diverged", "FAILED", 120),
        ("lora", 64, "failed", "FAILED", 200),
    ]
    for method, rank, outcome, status, steps in cases:
        spec = RunSpec(model="apertus-8b", method=method, lr=1e-2, rank=rank, sweep_id=sweep_id)
        losses = np.linspace(1.5, 0.3 if outcome == "diverged" else 0.5, steps)
        t0 = int(time.time() * 1000)
        metrics = _step_metrics(losses, spec.lr, t0)
        end = t0 + steps * 1000
        if outcome == "diverged":
            # As the training job does: a NaN step, then the mean of the finite tail.
            metrics.append(Metric("train/loss", float("nan"), end, steps + 1))
            metrics.append(Metric("train/final_loss", float(np.mean(losses[-9:])), end, 0))
        # The failed job crashed before its summary: no train/final_loss at all.
        tags = {**spec.tags(), "job_id": "synthetic-broken", "outcome": outcome}
        if outcome == "failed":  # as the sweep DAG's record task tags a job that crashed
            tags.update(failure_reason="job FAILED, exit code 1: RuntimeError: NCCL timeout",
                        job_state="FAILED")
        run = client.create_run(experiment_id, run_name=spec.run_name, tags=tags)
        _log_batched(client, run.info.run_id, metrics)
        client.set_terminated(run.info.run_id, status)
        run_ids[spec.run_name] = run.info.run_id
    return run_ids


def log_baselines(client: MlflowClient, experiment_id: str, sweep_id: str,
                  models: tuple[str, ...] = ("apertus-8b", "apertus-70b"),
                  sjp: bool = False) -> dict[str, str]:
    """Baseline runs of the untouched base models (tag method=base); with ``sjp`` their
    held-out SJP scores too."""
    run_ids = {}
    for model in models:
        tags = {"sweep_id": sweep_id, "model": model, "method": "base", "lr": "", "rank": "",
                "seed": "0", "outcome": "finished"}
        name = f"{model}-base"
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        ts = int(time.time() * 1000)
        values = lexam_metrics(model, "base", None, 0)
        if sjp:
            values.update(_sjp(SJP_BASE[model]))
            client.set_tag(run.info.run_id, "sjp_split_hash", "synthetic-split")
        metrics = [Metric(k, v, ts, 0) for k, v in values.items()]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id)
        run_ids[name] = run.info.run_id
    return run_ids


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id; artifacts go under LORA_REGRET_ARTIFACT_ROOT or beside a SQLite
    store (as training.tracking does), never into ./mlruns of the working directory."""
    existing = client.get_experiment_by_name(name)
    if existing:
        return existing.experiment_id
    root = os.environ.get("LORA_REGRET_ARTIFACT_ROOT")
    uri = client.tracking_uri
    if not root and uri.startswith("sqlite:///"):
        root = str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    location = Path(root, name).resolve().as_uri() if root else None
    return client.create_experiment(name, artifact_location=location)


def log_sweep(
    sweep: SweepSpec | None = None,
    *,
    sweep_id: str = "reference-synthetic",
    experiment: str = "lora-regret",
    steps: int = STEPS,
    seed_sd: float = 0.0,
    broken: bool = False,
    baselines: bool = True,
    tracking_uri: str | None = None,
    checkpoints: bool = False,
    register: bool = False,
) -> LoggedSweep:
    """Log a whole sweep (default: configs/sweeps/reference.yaml, 52 runs); ``checkpoints``:
    with evaluations over training and held-out SJP, ``register``: registry versions."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment)
    sweep = sweep or load_named_sweep("reference")
    run_ids = {}
    for spec in sweep.expand(sweep_id=sweep_id):
        run_ids[spec.run_name] = log_run(client, experiment_id, spec, steps=steps,
                                         seed_sd=seed_sd, checkpoints=checkpoints,
                                         register=register)
    if broken:
        run_ids.update(log_broken_runs(client, experiment_id, sweep_id))
    if baselines:
        models = tuple(sorted({spec.model for spec in sweep.expand()}))
        run_ids.update(log_baselines(client, experiment_id, sweep_id, models, sjp=checkpoints))
    return LoggedSweep(sweep_id, experiment_id, run_ids)
