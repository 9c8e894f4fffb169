"""Entry point: ``python -m evaluation [sweep] ...`` (see evaluation/cli.py)."""

from evaluation.cli import main

raise SystemExit(main())
