"""LEXam questions per second on CPU: batched against one question at a time.

Times the transformers backend's two passes on the same questions: log-likelihood
scoring of the choice letters (one forward pass per question) and greedy generation
with a small budget. Prints one JSON line per measurement.

    .venv/bin/python benchmarks/eval_throughput.py --model smollm2-135m --questions 16 \
        --batch-sizes 1 8 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from evaluation.backends.transformers_backend import TransformersBackend
from evaluation.data import load_questions, select_questions
from evaluation.models import resolve_base
from evaluation.prompt import build_prompt, choice_labels

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexam" / \
    "mcq_4_choices_test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = str(SHARED) if SHARED.is_file() else "synthetic"
    questions = select_questions(load_questions(data, 4), args.questions, seed=0)
    prompts = [build_prompt(q.question, q.choices, q.course) for q in questions]
    labels = [choice_labels(4)] * len(prompts)
    backend = TransformersBackend(resolve_base(args.model), dtype=args.dtype, progress=False)
    tokens = [len(backend.tokenizer(p)["input_ids"]) for p in prompts]
    backend.choice_logprobs(prompts[:1], labels[:1])  # warm-up
    for batch in args.batch_sizes:
        backend.batch_size = batch
        for what, run in (
            ("loglik", lambda: backend.choice_logprobs(prompts, labels)),
            ("generate", lambda: backend.generate(prompts, args.max_new_tokens)),
        ):
            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
            print(json.dumps({
                "model": args.model, "data": Path(data).name, "what": what,
                "batch_size": batch, "questions": len(prompts),
                "mean_prompt_tokens": round(sum(tokens) / len(tokens)),
                "max_new_tokens": args.max_new_tokens if what == "generate" else None,
                "dtype": args.dtype, "threads": args.threads, "seconds": round(seconds, 2),
                "questions_per_s": round(len(prompts) / seconds, 3),
            }), flush=True)


if __name__ == "__main__":
    main()
