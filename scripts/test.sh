#!/usr/bin/env bash
# The test command: builds the environment from nothing (idempotent), then runs pytest.
# Services the tests need (the local SLURM cluster and sshd, MLflow stores, Airflow's
# metadata DB) are started by the test fixtures themselves. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not slow"` or `scripts/test.sh tests/test_spec.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap-env.sh
export PYTHONUNBUFFERED=1
# Keep model preparation out of the user's cache when running in CI.
if [ "${CI:-}" = "true" ]; then export LORA_REGRET_CACHE="${LORA_REGRET_CACHE:-$PWD/.cache}"; fi
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest's exit 5 means "no tests collected": a selection that matched nothing is an error.
exit $status
