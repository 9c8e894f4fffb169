#!/usr/bin/env bash
# `make demo`: the whole platform on one machine, from a fresh clone.
#
#   environment -> local model -> MLflow server (SQLite + local artifacts)
#   -> Airflow standalone (LocalExecutor) -> trigger lora_regret_sweep on the local job
#   backend -> training, LEXam evaluation, report -> print where to look.
#
# A second `make demo` reuses the running services; `make down` stops what this started.
# Everything is configurable through the environment (defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

export LORA_REGRET_STATE="${LORA_REGRET_STATE:-$ROOT/.state/demo}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
export DEMO_SWEEP="${DEMO_SWEEP:-demo-cpu}"             # configs/sweeps/<name>.yaml
export DEMO_MODEL="${DEMO_MODEL:-smollm2-135m}"         # or tiny-apertus (faster)
export DEMO_MAX_STEPS="${DEMO_MAX_STEPS:-8}"
export DEMO_EVAL_QUESTIONS="${DEMO_EVAL_QUESTIONS:-8}"
export DEMO_EVAL_MAX_NEW_TOKENS="${DEMO_EVAL_MAX_NEW_TOKENS:-16}"
export DEMO_EVAL_BACKEND="${DEMO_EVAL_BACKEND:-transformers}"   # or vllm (one CPU server)
export DEMO_TIMEOUT_S="${DEMO_TIMEOUT_S:-2400}"
export LORA_REGRET_REPORTS_DIR="${LORA_REGRET_REPORTS_DIR:-$LORA_REGRET_STATE/reports}"
STATE="$LORA_REGRET_STATE"
# Logs, the Airflow home (its admin password, printed into its log too) and the job
# folders are the user's alone.
umask 077
mkdir -p "$STATE/pids" "$STATE/logs"

step() { printf '\n==> %s\n' "$*"; }
alive() { [ -f "$STATE/pids/$1" ] && kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

step "environment (.venv)"
bash scripts/bootstrap-env.sh

step "local model: $DEMO_MODEL"
.venv/bin/python -m training.models prepare "$DEMO_MODEL"

export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
if alive mlflow; then
  step "MLflow server already running on :$MLFLOW_PORT"
else
  port_free "$MLFLOW_PORT" || { echo "port $MLFLOW_PORT is taken: set MLFLOW_PORT" >&2; exit 1; }
  step "starting MLflow server on :$MLFLOW_PORT (SQLite + local artifacts in $STATE)"
  setsid .venv/bin/mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE/mlflow.db" \
    --artifacts-destination "$STATE/mlartifacts" \
    > "$STATE/logs/mlflow.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/mlflow"
fi

export AIRFLOW_HOME="$STATE/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW_PARALLELISM:-4}"
export AIRFLOW__API__PORT="$AIRFLOW_PORT"
# Task workers reach the API server here (the default assumes port 8080).
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW_PORT/execution/"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
export LORA_REGRET_CLUSTER=local
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if alive airflow; then
  step "Airflow already running on :$AIRFLOW_PORT"
else
  port_free "$AIRFLOW_PORT" || { echo "port $AIRFLOW_PORT is taken: set AIRFLOW_PORT" >&2; exit 1; }
  step "starting Airflow standalone on :$AIRFLOW_PORT (LocalExecutor, parallelism $AIRFLOW__CORE__PARALLELISM)"
  PATH="$ROOT/.venv/bin:$PATH" setsid .venv/bin/airflow standalone \
    > "$STATE/logs/airflow.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/airflow"
fi

step "triggering lora_regret_sweep ($DEMO_SWEEP, $DEMO_MODEL, $DEMO_MAX_STEPS steps) and following it"
.venv/bin/python scripts/demo_driver.py
