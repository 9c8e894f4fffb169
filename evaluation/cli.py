"""``python -m evaluation``: LEXam for one model, for one evaluation job spec, or for a sweep.

- ``python -m evaluation --spec eval.yaml [--output-dir DIR]``: the job the DAGs start
  (``contracts.evaluation.EvalJobSpec``);
- ``python -m evaluation sweep --sweep-id ID --model PRESET ...``: the same from flags;
- ``python -m evaluation --model M [--adapter A] ...``: one model, results as JSON (and
  into MLflow when MLFLOW_TRACKING_URI is set).

Exit codes: 0 evaluated, 2 bad arguments or data (nothing evaluated), 1 failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from contracts.cli import add_flags, flag_values
from contracts.errors import SpecError, parse
from contracts.evaluation import EvalJobSpec, EvalOptions, parse_eval_spec
from contracts.names import DEFAULT_EXPERIMENT
from contracts.outcomes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from contracts.redact import redact_text
from contracts.safe import SAFE_NAME_RE as _SAFE
from evaluation.data import DataError
from evaluation.lighteval_scorer import LightevalError
from evaluation.runner import EvalReport, build_eval_set, evaluate
from evaluation.serving import AdapterError, ServerError

DEFAULT_OUTPUT_DIR = Path("runs") / "lexam"
DTYPES = ("auto", "bfloat16", "float32", "float16")


def _common(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EvalOptions)
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="auto: bfloat16 where the hardware has it natively, else float32")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment for baseline runs (default {DEFAULT_EXPERIMENT})")


def _options(args: argparse.Namespace) -> EvalOptions:
    return parse(EvalOptions, flag_values(args, EvalOptions), "evaluation options")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Evaluate one model on LEXam multiple-choice questions (official prompt "
                    "and metric, plus format rate, parsed accuracy and log-likelihood "
                    "accuracy). Results: JSON on disk always; MLflow when "
                    "MLFLOW_TRACKING_URI is set. `python -m evaluation --spec FILE` runs an "
                    "evaluation job; `python -m evaluation sweep --help` a whole sweep.",
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
    parser.add_argument("--scorer", default="project", choices=("project", "lighteval"),
                        help="lighteval: its own runner generates and scores the official "
                             "accuracy against the vLLM server (needs --backend vllm)")
    parser.add_argument("--skip-evaluated", action="store_true",
                        help="leave runs already evaluated on exactly this set alone")
    parser.add_argument("--checkpoints", action="store_true",
                        help="also evaluate the checkpoints the runs kept, each at its step")
    parser.add_argument("--no-sjp", action="store_true",
                        help="do not score the held-out SJP cases")
    parser.add_argument("--sjp-max-cases", type=int, default=None,
                        help="score at most N held-out SJP cases per model")
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR),
                        help="where each run's results JSON is written")
    parser.add_argument("--output-json", default=None, help="all reports' summaries as JSON")
    _common(parser)
    return parser


def build_spec_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation --spec",
        description="Run one evaluation job from its spec file (as the DAGs write it). "
                    "Needs MLflow.")
    parser.add_argument("--spec", required=True, type=Path,
                        help="evaluation spec (YAML/JSON): contracts.evaluation.EvalJobSpec")
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR),
                        help="where each run's results JSON is written")
    parser.add_argument("--output-json", default=None, help="all reports' summaries as JSON")
    return parser


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:80]


def _backend(args: argparse.Namespace, base_path: str, adapter_path: Path | None,
             options: EvalOptions, workdir: str):
    """(backend, context manager to close) for the single-model mode."""
    from evaluation.models import resolve_dtype

    if args.backend == "transformers":
        from evaluation.backends.transformers_backend import TransformersBackend

        return TransformersBackend(base_path, adapter_path, dtype=resolve_dtype(args.dtype),
                                   batch_size=options.batch_size), nullcontext()
    from evaluation.backends.endpoint import EndpointBackend

    if args.backend == "endpoint":
        if not args.endpoint_url:
            raise DataError("endpoint-url: required with --backend endpoint")
        served = args.served_model or args.model
        return EndpointBackend(args.endpoint_url, served, base_path), nullcontext()
    from evaluation.models import adapter_rank
    from evaluation.serving import (
        BASE_NAME,
        ManagedServer,
        VllmServerConfig,
        free_port,
        load_adapter,
    )

    config = VllmServerConfig(
        model=base_path, port=free_port(), dtype=resolve_dtype(args.dtype),
        max_lora_rank=adapter_rank(adapter_path) if adapter_path is not None else None)
    server = ManagedServer(config.command(), config.base_url, Path(workdir) / "vllm.log",
                           env=config.env())
    server.start()
    served = BASE_NAME
    if adapter_path is not None:
        try:
            load_adapter(config.base_url, "adapter", adapter_path)
        except Exception:
            server.stop()
            raise
        served = "adapter"
    return EndpointBackend(config.base_url, served, base_path), _Stopper(server)


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
        from tracking.store import ensure_experiment

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


def _check_targets(args: argparse.Namespace) -> None:
    """Names that must exist, checked before anything is evaluated."""
    if not _SAFE.fullmatch(args.sweep_id or ""):
        raise DataError(f"sweep-id: {args.sweep_id!r} must start with a letter or digit and "
                        "hold only letters, digits, _ . -")
    from evaluation.tracking import parse_model_uri, tracking_enabled

    if args.adapter and args.adapter.startswith("models:"):
        try:
            name, version = parse_model_uri(args.adapter)
        except ValueError as error:
            raise DataError(str(error)) from None
    if not tracking_enabled():
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        if args.run_id:
            client.get_run(args.run_id)
        if args.adapter and args.adapter.startswith("models:"):
            client.get_model_version(name, version)
    except MlflowException as error:
        what = "run-id" if args.run_id and "run" in str(error).lower() else "adapter"
        raise DataError(f"{what}: not found in MLflow: {str(error).splitlines()[0][:200]}") \
            from None


def run_single(args: argparse.Namespace) -> int:
    from evaluation.models import resolve_adapter, resolve_base
    from evaluation.tracking import log_report

    options = _options(args)
    _check_targets(args)
    eval_set = build_eval_set(options)
    with tempfile.TemporaryDirectory(prefix="lexam-") as workdir:
        base_path = resolve_base(args.model)
        adapter_path = resolve_adapter(args.adapter, workdir) if args.adapter else None
        backend, closer = _backend(args, base_path, adapter_path, options, workdir)
        with closer:
            report = evaluate(backend, eval_set, options, model=args.model,
                              adapter=args.adapter, backend_name=args.backend)
    output = args.output_json or DEFAULT_OUTPUT_DIR / (
        f"{_slug(args.adapter or args.model)}-{report.eval_hash}.json")
    report.write_json(output)  # before MLflow: a tracking failure loses nothing
    run_id = None
    try:
        run_id = _target_run(args)
        if run_id:
            from mlflow.tracking import MlflowClient

            report = report.model_copy(update={"run_id": run_id})
            report.write_json(output)
            log_report(MlflowClient(), run_id, report)
    except Exception as error:  # noqa: BLE001 - the results are safe on disk; say how to log
        print(f"error: logging to MLflow failed ({type(error).__name__}: "
              f"{redact_text(str(error))[:300]}); the results are in {output}; log them "
              f"again with: python -m evaluation log {output} --run-id RUN_ID",
              file=sys.stderr)
        return EXIT_FAILED
    _print_summary(report)
    print(f"[evaluation] results: {output}" + (f" (MLflow run {run_id})" if run_id else ""),
          file=sys.stderr)
    return EXIT_OK


def run_job(spec: EvalJobSpec, output_dir: str, output_json: str | None) -> int:
    from evaluation.job import NotEvaluated, run_eval_job
    from evaluation.tracking import tracking_enabled

    if not tracking_enabled():
        raise DataError("MLFLOW_TRACKING_URI: an evaluation job reads runs from MLflow; set it")
    code = EXIT_OK
    try:
        reports = run_eval_job(spec, output_dir)
    except NotEvaluated as partial:  # the others were evaluated; the job still says so
        reports, code = partial.reports, EXIT_FAILED
        print(f"error: {partial}", file=sys.stderr)
    for report in reports:
        _print_summary(report)
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(
            [r.summary_dict() for r in reports], indent=2, default=str))
    return code


def run_log(argv: list[str]) -> int:
    """``python -m evaluation log RESULTS.json --run-id ID``: log a results file again."""
    parser = argparse.ArgumentParser(prog="python -m evaluation log",
                                     description="Log a results file (written by an "
                                                 "evaluation) into an MLflow run.")
    parser.add_argument("results", type=Path)
    parser.add_argument("--run-id", default=None, help="default: the run named in the file")
    args = parser.parse_args(argv)
    from mlflow.tracking import MlflowClient

    from evaluation.tracking import log_report

    report = EvalReport.read_json(args.results)
    run_id = args.run_id or report.run_id
    if not run_id:
        raise DataError("run-id: the results file names no run; give --run-id")
    log_report(MlflowClient(), run_id, report)
    print(f"[evaluation] logged {args.results} into MLflow run {run_id}", file=sys.stderr)
    return EXIT_OK


def _sweep_spec(args: argparse.Namespace) -> EvalJobSpec:
    raw: dict[str, Any] = {
        "model": args.model, "sweep_id": args.sweep_id, "experiment": args.experiment,
        "options": flag_values(args, EvalOptions), "backend": args.backend,
        "scorer": args.scorer,
        "dtype": args.dtype, "skip_evaluated": args.skip_evaluated,
        "checkpoints": args.checkpoints, "sjp": not args.no_sjp,
        "sjp_max_cases": args.sjp_max_cases}
    return parse_eval_spec(raw)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "log":
            return run_log(argv[1:])
        if argv and argv[0] == "sweep":
            args = build_sweep_parser().parse_args(argv[1:])
            return run_job(_sweep_spec(args), args.output_dir, args.output_json)
        if any(a == "--spec" or a.startswith("--spec=") for a in argv):
            args = build_spec_parser().parse_args(argv)
            spec = EvalJobSpec.from_file(args.spec)
            return run_job(spec, args.output_dir, args.output_json)
        return run_single(build_parser().parse_args(argv))
    except (SpecError, DataError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ServerError, AdapterError, LightevalError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
