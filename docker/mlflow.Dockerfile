# The team's MLflow tracking server: the mlflow version pinned in pyproject.toml with its
# basic-auth app, PostgreSQL driver (backend and auth stores) and boto3 (S3/MinIO
# artifact store). The entrypoint writes the basic-auth config from the environment, so
# no password is baked into the image or a file in the repository.
#
#   docker build -f docker/mlflow.Dockerfile -t lora-regret-mlflow:0.1.0 .
FROM python:3.12-slim-bookworm
ARG MLFLOW_VERSION=3.17.2

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" \
        "psycopg2-binary==2.9.13" "boto3==1.44.5" \
    && useradd --create-home --uid 1000 mlflow
COPY --chmod=0755 docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
COPY docker/create_bucket.py /usr/local/bin/create_bucket.py
USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint.sh"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--app-name", "basic-auth"]
