"""lighteval's own runner on the LEXam custom task, against a served model (one adapter).

Runs in the lighteval environment (``.venv-lighteval`` here: lighteval pins what the main
environment cannot have) and is started by ``evaluation.lighteval_scorer``::

    .venv-lighteval/bin/python -m evaluation.lighteval_run --base-url http://127.0.0.1:8000 \\
        --served-model run-a --data-dir DIR --choices 4 --max-new-tokens 16 --output out.json

``DIR`` holds the selected questions as ``test.jsonl``. lighteval's LiteLLM backend sends
each prompt to the server's ``/v1/chat/completions`` (the server applies the chat
template), greedy, and scores with the task's metric (official: last ``###X###``). The
output JSON holds lighteval's corpus metrics and, per question id, its generation and
sample metrics. Offline: LiteLLM's bundled model map, no hub, no OpenRouter look-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TASKS_FILE = Path(__file__).resolve().with_name("lighteval_tasks.py")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.lighteval_run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the server, without /v1")
    parser.add_argument("--served-model", required=True, help="served name (base or adapter)")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--choices", type=int, required=True, choices=(4, 8, 16, 32))
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="lighteval's sample cache and LiteLLM's (default: next to output)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cache = args.cache_dir or args.output.parent / "lighteval-cache"
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ["LEXAM_LOCAL_DIR"] = str(args.data_dir)
    os.environ["LEXAM_GENERATION_SIZE"] = str(args.max_new_tokens)
    os.chdir(cache.parent)  # LiteLLM's disk cache lands in the working directory

    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.endpoints.litellm_model import LiteLLMModelConfig
    from lighteval.models.model_input import GenerationParameters
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    model_config = LiteLLMModelConfig(
        model_name=f"openai/{args.served_model}", base_url=f"{args.base_url}/v1",
        api_key="EMPTY", concurrent_requests=args.concurrency,
        max_model_length=args.max_model_len, api_max_retry=2, cache_dir=str(cache),
        generation_parameters=GenerationParameters(temperature=0.0,
                                                   max_new_tokens=args.max_new_tokens),
    )
    pipeline = Pipeline(
        tasks=f"lexam_mcq_{args.choices}|0",
        pipeline_parameters=PipelineParameters(launcher_type=ParallelismManager.NONE,
                                               custom_tasks_directory=str(TASKS_FILE)),
        evaluation_tracker=EvaluationTracker(output_dir=str(cache), save_details=False),
        model_config=model_config,
    )
    pipeline.evaluate()
    results = pipeline.get_results()["results"]
    task_metrics = next(v for k, v in results.items() if k.startswith("lexam_mcq"))
    samples = [
        {"id": detail.doc.specific["id"], "text": (detail.model_response.text or [""])[0],
         "metric": detail.metric}
        for details in pipeline.get_details().values() for detail in details
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"metrics": task_metrics, "samples": samples},
                                      indent=1, default=float))
    print(f"[lighteval] {args.served_model}: {task_metrics}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
