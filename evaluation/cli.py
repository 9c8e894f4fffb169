"""``python -m evaluation``: LEXam for one model, or for a whole sweep of one base model.

Exit codes: 0 evaluated, 2 bad arguments or data (nothing evaluated), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from evaluation.data import HUB_REPO, DataError
from evaluation.runner import EvalOptions, EvalReport, build_eval_set, evaluate

DEFAULT_OUTPUT_DIR = Path("runs") / "lexam"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=f"hub:{HUB_REPO}",
                        help="local JSONL file or folder in the LEXam schema, 'synthetic', or "
                             "hub:REPO (configs mcq_N_choices); default %(default)s")
    parser.add_argument("--choices", type=int, default=4, choices=(4, 8, 16, 32),
                        help="number of answer choices (LEXam config); default 4")
    parser.add_argument("--max-questions", type=int, default=None,
                        help="evaluate a seeded sample of at most N questions (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    parser.add_argument("--languages", default=None,
                        help="comma-separated language filter, e.g. de,en (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=4096,
                        help="generation budget per answer (official: 4096)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="questions per forward pass (transformers backend)")
    parser.add_argument("--no-generate", action="store_true",
                        help="skip generation: log-likelihood accuracy only (fast)")
    parser.add_argument("--no-loglik", action="store_true",
                        help="skip the log-likelihood scoring of the choice letters")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    parser.add_argument("--experiment", default="lora-regret",
                        help="MLflow experiment for baseline runs (default lora-regret)")


def _options(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        data=args.data, choices=args.choices, max_questions=args.max_questions, seed=args.seed,
        languages=tuple(x.strip() for x in args.languages.split(",") if x.strip())
        if args.languages else None,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        generate=not args.no_generate, loglik=not args.no_loglik,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Evaluate one model on LEXam multiple-choice questions (official prompt "
                    "and metric, plus format rate, parsed accuracy and log-likelihood "
                    "accuracy). Results: JSON on disk always; MLflow when "
                    "MLFLOW_TRACKING_URI is set. `python -m evaluation sweep --help` "
                    "evaluates a whole sweep.",
    )
    parser.add_argument("--model", required=True,
                        help="model preset (e.g. tiny-apertus, apertus-8b), local folder or hub id")
    parser.add_argument("--adapter", default=None,
                        help="LoRA adapter: local folder or registry URI models:/NAME/VERSION")
    parser.add_argument("--backend", default="transformers",
                        choices=("transformers", "vllm", "endpoint"),
                        help="transformers: in process (CPU default); vllm: start a vLLM "
                             "server for this model; endpoint: an already running "
                             "OpenAI-compatible server (--endpoint-url)")
    parser.add_argument("--endpoint-url", default=None,
                        help="base URL of a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--served-model", default=None,
                        help="model name to request from the endpoint (default: --model)")
    parser.add_argument("--output-json", default=None,
                        help="where to write results (default runs/lexam/NAME-HASH.json)")
    parser.add_argument("--run-id", default=None,
                        help="MLflow run to log into (default: the adapter's training run, "
                             "or the base model's baseline run)")
    parser.add_argument("--sweep-id", default="adhoc",
                        help="sweep id of the baseline run for an untouched model")
    _common(parser)
    return parser


def build_sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation sweep",
        description="Evaluate the untouched base model (baseline run) and every finished run "
                    "of one sweep and base model, in one process (transformers) or with "
                    "one vLLM server holding all LoRA adapters (vllm). Needs MLflow.",
    )
    parser.add_argument("--sweep-id", required=True)
    parser.add_argument("--model", required=True, help="base model preset")
    parser.add_argument("--backend", default="transformers", choices=("transformers", "vllm"))
    parser.add_argument("--output-json", default=None, help="all reports' summaries as JSON")
    _common(parser)
    return parser


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:80]


def _backend(args: argparse.Namespace, base_path: str, adapter_path: Path | None,
             options: EvalOptions, workdir: str):
    """(backend, context manager to close) for the single-model mode."""
    from contextlib import nullcontext

    if args.backend == "transformers":
        from evaluation.backends.transformers_backend import TransformersBackend

        return TransformersBackend(base_path, adapter_path, dtype=args.dtype,
                                   batch_size=options.batch_size), nullcontext()
    from evaluation.backends.endpoint import EndpointBackend

    if args.backend == "endpoint":
        if not args.endpoint_url:
            raise DataError("endpoint-url: required with --backend endpoint")
        served = args.served_model or args.model
        return EndpointBackend(args.endpoint_url, served, base_path), nullcontext()
    from evaluation.models import adapter_rank
    from evaluation.serving import LoraModule, ManagedServer, VllmServerConfig, free_port

    adapters = ()
    if adapter_path is not None:
        adapters = (LoraModule(name="adapter", path=str(adapter_path),
                               rank=adapter_rank(adapter_path)),)
    config = VllmServerConfig(model=base_path, port=free_port(), adapters=adapters)
    server = ManagedServer(config.command(), config.base_url, Path(workdir) / "vllm.log")
    server.start()
    backend = EndpointBackend(config.base_url, "adapter" if adapters else "base", base_path)
    return backend, _Stopper(server)


class _Stopper:
    def __init__(self, server) -> None:
        self.server = server

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def _target_run(args: argparse.Namespace) -> str | None:
    """The MLflow run this evaluation belongs to, or None without tracking."""
    from mlflow.tracking import MlflowClient

    from evaluation.tracking import baseline_run, run_of_model_uri, tracking_enabled

    if not tracking_enabled():
        return None
    if args.run_id:
        return args.run_id
    client = MlflowClient()
    if args.adapter and args.adapter.startswith("models:/"):
        run_id = run_of_model_uri(client, args.adapter)
        if run_id:
            return run_id
    if args.adapter:
        from evaluation.tracking import ensure_experiment

        run = client.create_run(ensure_experiment(client, args.experiment),
                                run_name=f"lexam-{_slug(args.adapter)}",
                                tags={"model": args.model, "method": "adapter", "rank": ""})
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id
    return baseline_run(client, args.model, args.sweep_id, args.experiment)


def _print_summary(report: EvalReport) -> None:
    metrics = report.metrics
    parts = [f"n={int(metrics['lexam/n_questions'])}", f"chance={metrics['lexam/chance']:.3f}"]
    for key in ("accuracy", "format_rate", "parsed_accuracy", "loglik_accuracy"):
        if f"lexam/{key}" in metrics:
            parts.append(f"{key}={metrics[f'lexam/{key}']:.3f}")
    print(f"[evaluation] {report.adapter or report.model}: {' '.join(parts)}", file=sys.stderr)


def run_single(args: argparse.Namespace) -> int:
    from evaluation.models import resolve_adapter, resolve_base
    from evaluation.tracking import log_report

    options = _options(args)
    eval_set = build_eval_set(options)
    with tempfile.TemporaryDirectory(prefix="lexam-") as workdir:
        base_path = resolve_base(args.model)
        adapter_path = resolve_adapter(args.adapter, workdir) if args.adapter else None
        backend, closer = _backend(args, base_path, adapter_path, options, workdir)
        with closer:
            report = evaluate(backend, eval_set, options, model=args.model,
                              adapter=args.adapter, backend_name=args.backend)
    run_id = _target_run(args)
    if run_id:
        from mlflow.tracking import MlflowClient

        log_report(MlflowClient(), run_id, report)
        report = report.model_copy(update={"run_id": run_id})
    output = args.output_json or DEFAULT_OUTPUT_DIR / (
        f"{_slug(args.adapter or args.model)}-{report.eval_hash}.json")
    report.write_json(output)
    _print_summary(report)
    print(f"[evaluation] results: {output}" + (f" (MLflow run {run_id})" if run_id else ""),
          file=sys.stderr)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    import json

    from evaluation.sweep import evaluate_sweep
    from evaluation.tracking import tracking_enabled

    if not tracking_enabled():
        raise DataError("MLFLOW_TRACKING_URI: the sweep mode reads runs from MLflow; set it")
    reports = evaluate_sweep(args.sweep_id, args.model, _options(args), backend=args.backend,
                             experiment=args.experiment, dtype=args.dtype)
    for report in reports:
        _print_summary(report)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(
            [r.summary_dict() for r in reports], indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sweep = bool(argv) and argv[0] == "sweep"
    parser = build_sweep_parser() if sweep else build_parser()
    args = parser.parse_args(argv[1:] if sweep else argv)
    try:
        return run_sweep(args) if sweep else run_single(args)
    except ValidationError as error:
        for item in error.errors():
            field = ".".join(str(p) for p in item["loc"]).replace("_", "-")
            print(f"error: {field}: {item['msg']}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
