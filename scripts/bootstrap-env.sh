#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment from nothing.
# torch is installed first with pip, pinned, so the CPU wheel is used where one is
# available; uv then resolves the rest around it (much faster than pip for Airflow).
# Re-running is cheap: a stamp keyed on pyproject.toml skips an up-to-date env.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LORA_REGRET_VENV:-.venv}"
EXTRAS="${LORA_REGRET_EXTRAS:-all,dev}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.lora-regret-stamp"
want="$(cat pyproject.toml scripts/bootstrap-env.sh | sha256sum | cut -c1-16)-$EXTRAS"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[bootstrap] $VENV is up to date"
  exit 0
fi
echo "[bootstrap] creating $VENV (extras: $EXTRAS)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip uv
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/uv" pip install --python "$VENV/bin/python" -q -e ".[$EXTRAS]"
echo "$want" > "$stamp"
echo "[bootstrap] $VENV ready"
