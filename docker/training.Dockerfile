# The training job's image: CUDA torch (pinned as in pyproject.toml), transformers, peft,
# trl, accelerate, deepspeed, mlflow and the project (training + evaluation packages, so
# the same environment also runs `python -m evaluation` with the transformers backend,
# as the cluster profiles do: one container environment for every job).
#
# Build from the repository root (the context must be the repo):
#   docker build -f docker/training.Dockerfile -t lora-regret-training:0.1.0 .
# CSCS Alps (GH200, aarch64): build on a compute node with podman, see docs/CLUSTER.md.
#
# CUDA 12.8 matches torch's cu128 wheels and the Alps NCCL hook variant "cuda12".
# Check that https://download.pytorch.org/whl/cu128 carries torch 2.13.0 for your CPU
# architecture; otherwise pass another --build-arg TORCH_INDEX_URL / CUDA_IMAGE pair.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# python3.12-dev: DeepSpeed compiles its ops just in time (nvcc from the devel image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates git python3.12 python3.12-dev python3.12-venv \
    && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /usr/local/bin/uv

# torch first, from the PyTorch CUDA index: pyproject pins torch==2.13.0, which the
# local-version CUDA build (2.13.0+cu128) satisfies, so the next steps keep it.
RUN uv venv --python /usr/bin/python3.12 /opt/venv \
    && uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Dependencies only (cached until pyproject.toml changes). DeepSpeed (training extra, an
# sdist) builds against the torch already installed: no build isolation for it, no ops
# compiled now (DS_BUILD_OPS=0; they are built just in time on the GPU nodes).
WORKDIR /opt/lora-regret
COPY pyproject.toml README.md ./
RUN uv pip install setuptools wheel \
    && DS_BUILD_OPS=0 uv pip install --no-build-isolation-package deepspeed \
        -r pyproject.toml --extra training --extra evaluation \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

# The project, a normal install: configs/ goes to <prefix>/share/lora-regret.
COPY contracts/ contracts/
COPY tracking/ tracking/
COPY training/ training/
COPY evaluation/ evaluation/
COPY reporting/ reporting/
COPY plugins/cluster_jobs/ plugins/cluster_jobs/
COPY configs/ configs/
# tiny-apertus (random weights, built offline) is prepared now: the `tiny` sweep then
# runs as a cluster smoke test without building it in every job.
RUN uv pip install --no-deps . \
    && python -m training --help > /dev/null \
    && python -m training.models prepare tiny-apertus

# Models and datasets are cached here unless HF_HOME is set (the Alps profile sets it).
ENV HF_HOME=/opt/hf-cache \
    LORA_REGRET_HOME=/opt/lora-regret
CMD ["python", "-m", "training", "--help"]
