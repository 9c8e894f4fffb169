# The control plane's image: the official Apache Airflow image at the version pinned in
# pyproject.toml, the SSH provider (pyproject's airflow extra) and the project's DAGs,
# plugin (cluster_jobs), configs and packages. The DAGs import contracts (pydantic + PyYAML)
# and the plugin; their tasks use tracking (MLflow) and reporting in the worker; so the
# project is installed with its airflow extra (which includes reporting): no torch, no
# training extra. tests/test_airflow_env.py runs the DAGs in such an environment.
#
# Build from the repository root:
#   docker build -f docker/airflow.Dockerfile -t lora-regret-airflow:0.1.0 .
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.12
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION=3.3.2

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The official image's user is airflow, uid 50000, gid 0.
# ssh: a ProxyCommand (jump host) in ~airflow/.ssh/config runs it; see docs/CLUSTER.md.
USER 0
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/lora-regret \
    && chown 50000:0 /opt/lora-regret
USER 50000

WORKDIR /opt/lora-regret
COPY --chown=50000:0 pyproject.toml README.md ./
COPY --chown=50000:0 contracts/ contracts/
COPY --chown=50000:0 tracking/ tracking/
COPY --chown=50000:0 training/ training/
COPY --chown=50000:0 evaluation/ evaluation/
COPY --chown=50000:0 reporting/ reporting/
COPY --chown=50000:0 plugins/ plugins/
COPY --chown=50000:0 configs/ configs/
# Airflow pinned on the same command line, as the image's documentation asks, so that
# no dependency moves it. A normal install: configs/ goes to <prefix>/share/lora-regret.
# DL3013: "." is this repository, versioned by its own pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" ".[airflow]" \
    && python -c "import cluster_jobs, contracts.sweep, reporting.pipeline, tracking.record" \
    && ! python -c "import torch" 2> /dev/null
COPY --chown=50000:0 dags/ dags/

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/lora-regret/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/lora-regret/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    LORA_REGRET_REPORTS_DIR=/opt/airflow/reports
WORKDIR /opt/airflow
