#!/usr/bin/env bash
# `make down`: stop the services `make demo` started (by their recorded process groups),
# and nothing else. Data (MLflow store, reports, Airflow DB) stays in $LORA_REGRET_STATE.
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
echo "stopped; data kept in $STATE (delete it for a fresh start)"
