"""LEXam questions per second through each engine, on the same questions, in one run.

The transformers backend in bfloat16 and in float32, then a vLLM server (the CPU build
here, from .venv-vllm) including its start-up, on the same seeded questions of the
shared LEXam file (official prompt through the model's chat template): the letter
log-likelihoods (``evaluation.scoring``: every ``label###`` continuation), then greedy
generation. Prints one JSON line per measurement; ``--out`` writes them all.

    .venv/bin/python benchmarks/eval_engines.py --model smollm2-135m --questions 32 \\
        --max-new-tokens 16 --out benchmarks/results/eval_engines.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from evaluation.backends.endpoint import EndpointBackend
from evaluation.backends.transformers_backend import TransformersBackend
from evaluation.data import load_questions, select_questions
from evaluation.models import resolve_base
from evaluation.prompt import build_prompt, choice_labels
from evaluation.serving import ManagedServer, VllmServerConfig, free_port

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexam" / \
    "mcq_4_choices_test.jsonl"


def _timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--transformers-dtypes", nargs="*", default=["bfloat16", "float32"])
    parser.add_argument("--vllm-dtypes", nargs="*", default=["float32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = str(SHARED) if SHARED.is_file() else "synthetic"
    questions = select_questions(load_questions(data, 4), args.questions, seed=0)
    prompts = [build_prompt(q.question, q.choices, q.course) for q in questions]
    labels = [choice_labels(4)] * len(prompts)
    model_path = resolve_base(args.model)
    rows: list[dict] = []

    def emit(engine: str, dtype: str, what: str, seconds: float, **extra: object) -> None:
        row = {"model": args.model, "engine": engine, "dtype": dtype, "what": what,
               "questions": len(prompts), "seconds": round(seconds, 1),
               "questions_per_s": round(len(prompts) / seconds, 3) if what != "start" else None,
               **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for dtype in args.transformers_dtypes:
        backend = TransformersBackend(model_path, dtype=dtype, batch_size=args.batch_size,
                                      progress=False)
        seconds, _ = _timed(lambda b=backend: b.choice_logprobs(prompts, labels))
        emit("transformers", dtype, "loglik", seconds)
        seconds, _ = _timed(lambda b=backend: b.generate(prompts, args.max_new_tokens))
        emit("transformers", dtype, "generate", seconds, max_new_tokens=args.max_new_tokens,
             batch_size=args.batch_size)
        del backend

    for dtype in args.vllm_dtypes:
        config = VllmServerConfig(model=model_path, port=free_port(), dtype=dtype,
                                  max_model_len=4096)
        with tempfile.TemporaryDirectory() as tmp:
            server = ManagedServer(config.command(), config.base_url, Path(tmp) / "vllm.log",
                                   env=config.env())
            start, _ = _timed(server.start)
            try:
                emit("vllm", dtype, "start", start)
                remote = EndpointBackend(config.base_url, "base", model_path, progress=False)
                loglik, _ = _timed(lambda r=remote: r.choice_logprobs(prompts, labels))
                emit("vllm", dtype, "loglik", loglik)
                gen, _ = _timed(lambda r=remote: r.generate(prompts, args.max_new_tokens))
                emit("vllm", dtype, "generate", gen, max_new_tokens=args.max_new_tokens)
                total = start + loglik + gen
                emit("vllm", dtype, "start+loglik+generate", total)
            finally:
                server.stop()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
