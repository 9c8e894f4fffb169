#!/usr/bin/env bash
# Writes MLflow's basic-auth config file from the environment, then runs the command.
# The basic-auth app reads its user database URI from an ini file (MLFLOW_AUTH_CONFIG_PATH)
# only, and that URI holds the database password, which must come from the environment.
# The first admin comes from MLflow's own MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD variables
# and the CSRF key from MLFLOW_FLASK_SERVER_SECRET_KEY (both read by MLflow directly).
#   MLFLOW_AUTH_DATABASE_URI          where users and permissions live (PostgreSQL here)
#   MLFLOW_AUTH_DEFAULT_PERMISSION    READ (default) | EDIT | MANAGE | NO_PERMISSIONS
set -euo pipefail

: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set MLFLOW_AUTH_ADMIN_USERNAME}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"

config="${MLFLOW_AUTH_CONFIG_PATH:-/tmp/mlflow-auth/basic_auth.ini}"
umask 077
mkdir -p "$(dirname "$config")"
# configparser interpolates '%': double it so any password in the URI survives.
{
  echo "[mlflow]"
  echo "default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"
  echo "database_uri = ${MLFLOW_AUTH_DATABASE_URI//%/%%}"
  echo "authorization_function = mlflow.server.auth:authenticate_request_basic_auth"
} > "$config"
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec "$@"
