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

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
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
# Offline, its task registry only checks that tinyBenchmarks.pkl exists: an empty one.
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
    zipfile-zstd zstandard agent-client-protocol
  touch "$lv_sp/lighteval/tasks/tasks/tinyBenchmarks.pkl"
fi

echo "$want" > "$stamp"
echo "[bootstrap] $VENV ready"
