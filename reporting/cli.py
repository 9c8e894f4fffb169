"""``python -m reporting``: regenerate findings and figures of sweeps from MLflow."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from contracts.errors import describe_errors
from contracts.paths import default_tracking_uri
from reporting.config import NothingToReport, ReportConfig, default_output_dir

EPILOG = """\
Reads MLflow from MLFLOW_TRACKING_URI (default: the project's sqlite:///.state/mlflow.db).
Writes, per sweep, into OUTPUT_DIR/SWEEP_ID/: lr_sweep, learning_curves, tradeoff,
forgetting_curves, task_vs_retention and trainable_fraction figures (PNG and SVG),
report.md, report.html (self-contained) and findings.json (with the recommended recipe,
whose registry version gets the alias 'recommended'); metric histories are cached in
OUTPUT_DIR/cache (or --cache-dir), so a second run only reads runs that changed. Each
report is logged to MLflow as a run tagged kind=report and sweep_id=SWEEP_ID, unless
--no-mlflow-log.

Exit codes: 0 done, 2 bad arguments, 3 nothing to report (unknown sweep, no runs).
examples:
  python -m reporting --sweep-id reference --output-dir reports
  python -m reporting --all --experiment lora-regret
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reporting", description=__doc__.split(":", 1)[1].strip(),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep-id", action="append", metavar="ID",
                       help="sweep to report on (tag sweep_id); repeat for several")
    which.add_argument("--all", action="store_true", help="every sweep found in MLflow")
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"reports folder (default: $LORA_REGRET_REPORTS_DIR or "
                        f"{default_output_dir()})")
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment to search (default: all experiments)")
    p.add_argument("--tracking-uri", default=None,
                   help="overrides MLFLOW_TRACKING_URI")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="history cache (default: OUTPUT_DIR/cache)")
    p.add_argument("--final-loss-window", type=int, default=10,
                   help="last N losses averaged for runs that logged no train/final_loss")
    p.add_argument("--smoothing", type=int, default=20,
                   help="moving-average window of the learning-curve figure (steps)")
    p.add_argument("--history-backend", default="auto", choices=["auto", "sql", "rest", "client"],
                   help="how histories are read (auto: batched for SQL stores and servers)")
    p.add_argument("--retention-margin", type=float, default=0.02,
                   help="LEXam accuracy (fraction) below the base model a recommended recipe "
                        "may lose (default 0.02 = 2 points)")
    p.add_argument("--retention-metric", default="accuracy",
                   choices=["accuracy", "loglik_accuracy"],
                   help="LEXam metric for retention (default: the official accuracy)")
    p.add_argument("--no-alias", action="store_true",
                   help="do not mark the recommended model version with the alias "
                        "'recommended'")
    p.add_argument("--no-mlflow-log", action="store_true",
                   help="write files only; do not log a report run")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[reporting] %(message)s", stream=sys.stderr)
    settings = {
        "tracking_uri": args.tracking_uri or default_tracking_uri(),
        "sweep_ids": tuple(args.sweep_id or ()),
        "experiment": args.experiment,
        "cache_dir": args.cache_dir,
        "final_loss_window": args.final_loss_window,
        "smoothing_window": args.smoothing,
        "log_to_mlflow": not args.no_mlflow_log,
        "history_backend": args.history_backend,
        "retention_margin": args.retention_margin,
        "retention_metric": args.retention_metric,
        "set_alias": not args.no_alias,
    }
    if args.output_dir is not None:
        settings["output_dir"] = args.output_dir
    try:
        config = ReportConfig(**settings)
    except ValidationError as error:
        print(f"error: {describe_errors(error)}", file=sys.stderr)
        return 2
    from reporting.pipeline import generate  # heavy imports after argument checks

    try:
        reports = generate(config)
    except NothingToReport as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    for report in reports:
        print(json.dumps(report.summary()))
    return 0
