#!/usr/bin/env bash
# Runs once, on an empty PostgreSQL volume (docker-entrypoint-initdb.d): MLflow gets its
# own role and two databases (tracking store, basic-auth users). The password travels as
# a psql variable (:'pw' quotes it), never spliced into SQL text.
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 -v pw="$MLFLOW_DB_PASSWORD" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
SQL
