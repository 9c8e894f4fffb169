"""A short real sweep with held-out SJP and forgetting curves, on this machine's CPU.

SmolLM2-135M-Instruct, LoRA rank 16 at two learning rates, trained on the real SJP sample
(``../shared/data/sjp_sample``, 20% held out, stratified), checkpoints every 4 steps kept
and evaluated (LEXam subset + held-out SJP) next to the final models and the untouched
base model, then the report (figures, findings, recommendation, registry alias).

    .venv/bin/python scripts/heldout_sweep.py [--state DIR] [--steps 12] [--questions 24]

Everything goes to DIR (default ``.state/heldout-sweep``): the MLflow store, run folders,
evaluation results and the report. Took 77 minutes on 2 cores shared with other work.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SJP = ROOT.parent / "shared" / "data" / "sjp_sample" / "cases.jsonl"
LEXAM = ROOT.parent / "shared" / "data" / "lexam" / "mcq_4_choices_test.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=ROOT / ".state" / "heldout-sweep")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-steps", type=int, default=4)
    parser.add_argument("--lrs", default="1e-4,1e-3")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--stage", choices=("all", "train", "evaluate", "report"), default="all")
    args = parser.parse_args()

    from contracts.evaluation import EvalJobSpec, EvalOptions
    from contracts.spec import RunSpec

    state = args.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{state}/mlflow.db",
           "MLFLOW_REGISTRY_URI": f"sqlite:///{state}/mlflow.db",
           "LORA_REGRET_ARTIFACT_ROOT": str(state / "artifacts"),
           "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "HF_HUB_OFFLINE": "1"}
    python = sys.executable
    if args.stage in ("all", "train"):
        for lr in (float(x) for x in args.lrs.split(",")):
            spec = RunSpec(
                model="smollm2-135m", method="lora", rank=args.rank, lr=lr,
                max_steps=args.steps, per_device_batch=4, grad_accum=1, max_seq_length=256,
                save_steps=args.save_steps, checkpoint_eval_every=1, bf16="off",
                data={"source": str(SJP), "heldout_fraction": 0.2},
                output_dir=str(state / "runs"), sweep_id="heldout-real")
            path = state / f"spec-lr{lr:g}.yaml"
            path.write_text(spec.to_yaml())
            subprocess.run([python, "-m", "training", "--spec", str(path)], env=env, check=True,
                           cwd=ROOT)
    if args.stage in ("all", "evaluate"):
        eval_spec = EvalJobSpec(
            model="smollm2-135m", sweep_id="heldout-real", checkpoints=True, dtype="float32",
            options=EvalOptions(data=str(LEXAM) if LEXAM.is_file() else "synthetic",
                                max_questions=args.questions,
                                max_new_tokens=args.max_new_tokens, batch_size=8))
        path = state / "eval.yaml"
        path.write_text(eval_spec.to_yaml())
        subprocess.run([python, "-m", "evaluation", "--spec", str(path), "--output-dir",
                        str(state / "results")], env=env, check=True, cwd=ROOT)
    if args.stage in ("all", "report"):
        subprocess.run([python, "-m", "reporting", "--sweep-id", "heldout-real",
                        "--output-dir", str(state / "reports"),
                        "--retention-metric", "loglik_accuracy"], env=env, check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
