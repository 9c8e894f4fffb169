#!/usr/bin/env bash
# `make down`: stop the services `make demo` started (by their recorded process groups),
# then the local jobs they left running (the `local` profile's job folders: each job is a
# detached process group, so stopping Airflow does not end it), and nothing else.
# Data (MLflow store, reports, Airflow DB, job folders) stays.
set -uo pipefail
cd "$(dirname "$0")/.."
STATE="${LORA_REGRET_STATE:-$PWD/.state/demo}"
for name in airflow mlflow; do
  pidfile="$STATE/pids/$name"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "stopping $name (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
done
# Airflow is down, so nothing submits new jobs: end the ones still running or waiting.
if [ -x .venv/bin/python ]; then
  .venv/bin/python -m cluster_jobs.local stop local || echo "could not stop the local jobs" >&2
fi
echo "stopped; data kept in $STATE and in the local cluster's .state/jobs and .state/runs"
echo "(for a fresh start delete all three: job claims and checkpoints there outlive the MLflow store)"
