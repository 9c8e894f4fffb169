"""``python -m training``: train one run spec (from a file or from flags)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from contracts.errors import SpecError, describe_errors
from contracts.files import read_mapping
from contracts.outcomes import EXIT_BAD_INPUT as EXIT_BAD_SPEC
from contracts.outcomes import EXIT_OK as EXIT_FINISHED
from contracts.outcomes import OUTCOME_EXIT_CODES
from contracts.redact import run_main
from contracts.spec import RunSpec, parse_spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=(
            "Fine-tune one model on Swiss Judgment Prediction (LoRA or full) and record the "
            "run in MLflow (MLFLOW_TRACKING_URI; default a SQLite store in .state/). "
            "Give a spec file, or flags; flags override values from the file."
        ),
        epilog=(
            "Exit codes: 0 finished, 1 failed, 2 invalid spec (nothing trained), "
            "3 diverged (NaN/inf loss, recorded in MLflow), 4 out of memory (recorded as oom). "
            "Example: python -m training --model smollm2-135m --method lora --rank 16 "
            "--lr 1e-4 --max-steps 20 --data ../shared/data/sjp_sample/cases.jsonl"
        ),
    )
    add = parser.add_argument
    add("--spec", type=Path, help="run spec file (YAML or JSON), as the sweep DAG writes it")
    add("--model", help="model preset: apertus-8b, apertus-70b, smollm2-135m, tiny-apertus")
    add("--model-path", help="local folder with the preset's weights (instead of the hub)")
    add("--method", choices=["lora", "full"], help="LoRA adapters or full fine-tuning")
    add("--lr", type=float, help="learning rate (constant schedule by default)")
    add("--rank", type=int, help="LoRA rank, a power of two (LoRA only)")
    add("--alpha", type=float, help="LoRA alpha (default 32)")
    add("--seed", type=int, help="random seed (default 0)")
    add("--epochs", type=float, help="epochs over the data (default 1)")
    add("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    add("--batch", dest="per_device_batch", type=int, help="per-device batch (default 4)")
    add("--grad-accum", type=int, help="gradient accumulation steps (default 4)")
    add("--max-seq-length", type=int, help="tokens per example (default 1024)")
    add("--lr-schedule", choices=["constant", "constant_with_warmup", "linear", "cosine"])
    add("--zero-stage", type=int, choices=[0, 2, 3], help="DeepSpeed ZeRO stage")
    add("--bf16", choices=["auto", "on", "off"],
        help="bfloat16 (auto: where the hardware computes in it natively)")
    add("--data", help="'synthetic', 'hub:rcds/swiss_judgment_prediction', or a JSONL/"
        "Parquet file or folder in the SJP schema")
    add("--data-config", help="hub dataset config (e.g. all_languages)")
    add("--languages", help="comma-separated case languages to keep (de,fr,it)")
    add("--max-samples", type=int, help="use at most this many cases (seeded sample)")
    add("--output-dir", help="folder for run folders and checkpoints (default runs/)")
    add("--sweep-id", help="sweep this run belongs to (MLflow tag)")
    add("--experiment", help="MLflow experiment (default lora-regret)")
    add("--save-steps", type=int, help="checkpoint every N steps (default 50)")
    add("--job-id", default=os.environ.get("SLURM_JOB_ID"),
        help="cluster job id to tag the run with (default $SLURM_JOB_ID)")
    add("--no-register", action="store_true", help="do not register the result in the registry")
    add("--print-spec", action="store_true", help="validate, print the spec and its hash, exit")
    return parser


DATA_FLAGS = {"data": "source", "data_config": "hub_config", "languages": "languages",
              "max_samples": "max_samples"}
SPEC_FLAGS = ("model", "model_path", "method", "lr", "rank", "alpha", "seed", "epochs",
              "max_steps", "per_device_batch", "grad_accum", "max_seq_length", "lr_schedule",
              "zero_stage", "bf16", "output_dir", "sweep_id", "experiment", "save_steps")


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    raw: dict = read_mapping(args.spec, "run spec") if args.spec else {}
    for name in SPEC_FLAGS:
        value = getattr(args, name)
        if value is not None:
            raw[name] = value
    data = dict(raw.get("data") or {})
    for flag, field in DATA_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[field] = value.split(",") if flag == "languages" else value
    if data:
        raw["data"] = data
    return parse_spec(raw)


def check_writable(folder: Path) -> None:
    """The run folder can be created (its nearest existing parent is a writable folder)."""
    parent = folder.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(f"output_dir: cannot create {folder} ({parent} is not a writable folder)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[training] %(message)s")
    try:
        spec = spec_from_args(args)
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_BAD_SPEC
    except (OSError, ValidationError) as error:
        message = describe_errors(error) if isinstance(error, ValidationError) else error
        print(f"invalid run spec: {message}", file=sys.stderr)
        return EXIT_BAD_SPEC
    if args.print_spec:
        print(spec.to_yaml() + f"# spec_hash: {spec.spec_hash}")
        return EXIT_FINISHED

    from training.data import DataError
    from training.job import prepare_inputs, run_training

    try:  # data, tokenizer and output folder checked before anything is created
        inputs = prepare_inputs(spec)
        check_writable(spec.run_dir)
    except (DataError, SpecError) as error:
        print(error, file=sys.stderr)
        return EXIT_BAD_SPEC
    print(f"[training] {spec.run_name} spec={spec.spec_hash} -> {spec.run_dir}", file=sys.stderr)
    outcome = run_training(spec, job_id=args.job_id, register=not args.no_register,
                           inputs=inputs)
    print(f"[training] {outcome.outcome}: final loss {outcome.final_loss} after "
          f"{outcome.steps} steps; MLflow run {outcome.run_id}; model {outcome.model_uri}",
          file=sys.stderr)
    return OUTCOME_EXIT_CODES.get(outcome.outcome, EXIT_FINISHED)


if __name__ == "__main__":
    sys.exit(run_main(main))
