"""Entry point: ``python -m evaluation [--spec FILE | sweep | log] ...`` (evaluation/cli.py)."""

from contracts.redact import run_main
from evaluation.cli import main

raise SystemExit(run_main(main))
