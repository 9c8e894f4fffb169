"""One evaluation job (an ``EvalJobSpec``): one base model, its baseline and its runs.

Targets are the runs the spec names (``run_ids``: the nightly's registered versions) or every
finished run of the sweep and base model: LoRA adapters from the registry (tag
``registered_model_uri``), full fine-tunes from their checkpoint (tag ``checkpoint_path``).
With ``skip_evaluated`` a run already tagged with this evaluation set's hash is skipped.

- ``transformers`` (CPU, tests): the base weights are loaded once and adapters attached
  by name; full fine-tunes load as models of their own.
- ``vllm``: one server for the base model; its adapters are loaded into it one after
  another at run time (bounded LoRA slots, ``evaluation.serving``), then one server per
  full fine-tune; evaluated through the OpenAI-compatible endpoint. With ``scorer:
  lighteval`` lighteval's own runner generates and scores the official accuracy against
  that server (``evaluation.lighteval_scorer``).

Failures say what happened: an adapter that cannot be fetched or that the server refuses
is reported by name (stderr and the run's tag ``lexam_eval_error``) and the other runs are
still evaluated; a server that dies fails the job with the server's last log lines.

Each report is written to ``output_dir`` before it is logged to MLflow, so a tracking
failure never loses an evaluation. ``evaluation.extras`` adds the rest: the runs' kept
checkpoints as extra targets (LoRA ones join the adapter list), held-out SJP scores and the
difference to the base model, each at its step.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from contracts.evaluation import EvalJobSpec, EvalOptions
from contracts.names import (
    TAG_CHECKPOINT_PATH,
    TAG_LEXAM_EVAL_HASH,
    TAG_METHOD,
    TAG_MODEL,
    TAG_OUTCOME,
    TAG_REGISTERED_MODEL_URI,
    TAG_SWEEP_ID,
)
from evaluation.backends import Backend
from evaluation.extras import EvalExtras
from evaluation.lighteval_scorer import LightevalBackend
from evaluation.models import adapter_rank, resolve_adapter, resolve_base, resolve_dtype
from evaluation.runner import EvalReport, EvalSet, build_eval_set, evaluate
from evaluation.serving import (
    BASE_NAME,
    AdapterError,
    ManagedServer,
    VllmServerConfig,
    free_port,
    load_adapter,
    unload_adapter,
)
from evaluation.tracking import baseline_run, log_report, parse_model_uri
from tracking.store import ensure_experiment

SweepBackend = Literal["transformers", "vllm"]
TAG_EVAL_ERROR = "lexam_eval_error"
# Opens the backend for the base model (None) or one adapter by name, for one evaluation.
Opener = Callable[[str | None], AbstractContextManager[Backend]]


class EvalTarget(BaseModel):
    """One finished training run to evaluate."""

    run_id: str
    run_name: str
    method: Literal["lora", "full"]
    model_uri: str | None = None
    checkpoint_path: str | None = None
    eval_hash: str = ""
    step: int | None = None  # a checkpoint of the run (None: its final model)

    @property
    def adapter_name(self) -> str:
        """The run name as a PEFT/vLLM adapter name (PEFT refuses dots in module names)."""
        name = re.sub(r"[^A-Za-z0-9_-]", "_", self.run_name)
        return name if self.step is None else f"{name}_step{self.step}"


def _target(run: Any) -> EvalTarget | None:
    tags = run.data.tags
    method = tags.get(TAG_METHOD)
    common = {"run_id": run.info.run_id, "run_name": run.info.run_name,
              "eval_hash": tags.get(TAG_LEXAM_EVAL_HASH, "")}
    if method == "lora" and tags.get(TAG_REGISTERED_MODEL_URI):
        return EvalTarget(method="lora", model_uri=tags[TAG_REGISTERED_MODEL_URI], **common)
    if method == "full" and tags.get(TAG_CHECKPOINT_PATH):
        return EvalTarget(method="full", checkpoint_path=tags[TAG_CHECKPOINT_PATH],
                          model_uri=tags.get(TAG_REGISTERED_MODEL_URI), **common)
    print(f"[evaluation] skipping run {run.info.run_name}: no registered model",
          file=sys.stderr)
    return None


def find_targets(client: MlflowClient, spec: EvalJobSpec) -> list[EvalTarget]:
    """The runs the spec names, or every finished run of its sweep and base model."""
    if spec.run_ids is not None:
        runs = []
        for run_id in spec.run_ids:
            run = client.get_run(run_id)
            if run.data.tags.get(TAG_MODEL) != spec.model:
                raise ValueError(f"run_ids: run {run_id} trained "
                                 f"{run.data.tags.get(TAG_MODEL)!r}, not {spec.model!r}")
            runs.append(run)
    else:
        experiment_id = ensure_experiment(client, spec.experiment)
        runs = client.search_runs(
            [experiment_id],
            filter_string=(f"tags.{TAG_SWEEP_ID} = '{spec.sweep_id}' and "
                           f"tags.{TAG_MODEL} = '{spec.model}' and "
                           f"tags.{TAG_OUTCOME} = 'finished'"),
            max_results=5000,
        )
    targets = [t for t in map(_target, runs) if t is not None]
    return sorted(targets, key=lambda t: t.run_name)


class NotEvaluated(RuntimeError):
    """Some runs could not be evaluated; all the others were (``reports``), and each failed
    run carries the reason in its tag ``lexam_eval_error``. The job exits non-zero."""

    def __init__(self, reports: list[EvalReport], failures: list[str]) -> None:
        super().__init__(f"{len(failures)} run(s) not evaluated: {', '.join(failures)}")
        self.reports = reports
        self.failures = failures


def _tag_version(client: MlflowClient, model_uri: str | None, eval_hash: str) -> None:
    """The registry version says which evaluation set its run was last evaluated on."""
    if model_uri and model_uri.startswith("models:/"):
        name, version = parse_model_uri(model_uri)
        client.set_model_version_tag(name, version, TAG_LEXAM_EVAL_HASH, eval_hash)


def run_eval_job(spec: EvalJobSpec, output_dir: str | Path, server_port: int | None = None,
                 server: ManagedServer | None = None) -> list[EvalReport]:
    """Evaluate the spec's baseline and targets; each report is written, then logged.

    ``server``: an already running vLLM server for the base model (started with LoRA on
    and a large enough rank) that the vllm backend uses instead of starting its own.
    """
    client = MlflowClient()
    output_dir = Path(output_dir)
    options = spec.options
    eval_set = build_eval_set(options)
    targets = find_targets(client, spec)
    baseline_id = (baseline_run(client, spec.model, spec.sweep_id, spec.experiment)
                   if spec.baseline and spec.sweep_id else None)
    if spec.skip_evaluated:
        skipped = [t.run_name for t in targets if t.eval_hash == eval_set.eval_hash]
        targets = [t for t in targets if t.eval_hash != eval_set.eval_hash]
        if baseline_id and client.get_run(baseline_id).data.tags.get(
                TAG_LEXAM_EVAL_HASH) == eval_set.eval_hash:
            skipped.append("baseline")
            baseline_id = None
        if skipped:
            print(f"[evaluation] already evaluated on {eval_set.eval_hash}: "
                  f"{', '.join(skipped)}", file=sys.stderr)
    print(f"[evaluation] {spec.model}: {'baseline + ' if baseline_id else ''}{len(targets)} "
          f"run(s) on {len(eval_set.questions)} questions (eval set {eval_set.eval_hash})",
          file=sys.stderr)
    reports: list[EvalReport] = []
    failures: list[str] = []
    if not targets and not baseline_id:
        return reports
    dtype = resolve_dtype(spec.dtype)
    base_path = resolve_base(spec.model)
    extras = EvalExtras(client, spec, output_dir)  # held-out SJP, deltas, checkpoints
    checkpoints = extras.prepare(targets)

    def record(report: EvalReport, backend: Backend, target: EvalTarget | None) -> None:
        """A final model's (or the baseline's, target None) report into its run; a
        checkpoint's at its step."""
        run_id = target.run_id if target else baseline_id
        assert run_id
        report = report.model_copy(update={"run_id": run_id})
        step = target.step if target else None
        suffix = "" if step is None else f"-step{step}"
        report.write_json(output_dir / f"{run_id}{suffix}-{report.eval_hash}.json")
        if step is None:
            log_report(client, run_id, report, step=extras.final_step(run_id) if target else 0)
            if TAG_EVAL_ERROR in client.get_run(run_id).data.tags:  # an earlier failure ended
                client.delete_tag(run_id, TAG_EVAL_ERROR)
            _tag_version(client, target.model_uri if target else None, report.eval_hash)
            reports.append(report)
        extras.after_report(report, run_id, backend, step=step, baseline=target is None)

    def fail(target: EvalTarget, message: str) -> None:
        print(f"[evaluation] NOT evaluated: {target.run_name}: {message}", file=sys.stderr)
        client.set_tag(target.run_id, TAG_EVAL_ERROR, message[:4000])
        failures.append(target.run_name)

    def evaluate_with(opener: Opener, name: str | None, model: str, adapter: str | None,
                      target: EvalTarget | None) -> None:
        with opener(name) as backend_obj:
            record(_run(backend_obj, eval_set, options, model, adapter, spec.backend),
                   backend_obj, target)

    with tempfile.TemporaryDirectory(prefix="lexam-adapters-") as workdir:
        loras: list[tuple[EvalTarget, Path]] = []
        for target in (t for t in targets if t.method == "lora"):
            try:
                loras.append((target, resolve_adapter(target.model_uri or "", workdir)))
            except Exception as error:  # one missing adapter must not stop the others
                fail(target, f"adapter {target.model_uri} could not be fetched: {error}")
        loras += [(t, Path(t.checkpoint_path or "")) for t in checkpoints if t.method == "lora"]
        fulls = [t for t in [*targets, *checkpoints] if t.method == "full"]
        if baseline_id or loras:
            with _base_backends(spec, base_path, loras, eval_set, dtype, server_port, workdir,
                                server) as opener:
                if baseline_id:
                    evaluate_with(opener, None, spec.model, None, None)
                for target, _ in loras:
                    try:
                        evaluate_with(opener, target.adapter_name, spec.model,
                                      target.model_uri or target.checkpoint_path, target)
                    except AdapterError as error:
                        fail(target, str(error))
        for target in fulls:
            path = target.checkpoint_path or ""
            with _base_backends(spec, path, [], eval_set, dtype, server_port,
                                workdir) as opener:
                evaluate_with(opener, None, path, None, target)
    if failures:
        raise NotEvaluated(reports, failures)
    return reports


def _run(backend_obj: Backend, eval_set: EvalSet, options: EvalOptions, model: str,
         adapter: str | None, backend: str) -> EvalReport:
    print(f"[evaluation] evaluating {adapter or model}", file=sys.stderr)
    report = evaluate(backend_obj, eval_set, options, model=model, adapter=adapter,
                      backend_name=backend)
    if isinstance(backend_obj, LightevalBackend) and "accuracy" in backend_obj.metrics:
        theirs = backend_obj.metrics["accuracy"]
        ours = report.metrics.get("lexam/accuracy")
        if ours is not None and abs(ours - theirs) > 1e-9:
            print(f"[evaluation] lighteval's accuracy {theirs:.4f} differs from the "
                  f"project's {ours:.4f} on the same answers", file=sys.stderr)
        report = report.model_copy(update={
            "scorer": "lighteval", "metrics": {**report.metrics, "lexam/accuracy": theirs}})
    return report


@contextmanager
def _base_backends(spec: EvalJobSpec, base_path: str, loras: list[tuple[EvalTarget, Path]],
                   eval_set: EvalSet, dtype: str, server_port: int | None, workdir: str,
                   server: ManagedServer | None = None) -> Iterator[Opener]:
    """An opener of the backend for the base model (None) or one adapter by run name."""
    if spec.backend == "transformers":
        yield _transformers_opener(base_path, loras, spec.options, dtype)
        return
    config = VllmServerConfig(
        model=base_path, port=server_port or free_port(), dtype=dtype,
        max_lora_rank=max((adapter_rank(folder) for _, folder in loras), default=None),
    )
    adapter_paths = {target.adapter_name: folder for target, folder in loras}
    if server is not None:
        yield _vllm_opener(server, adapter_paths, base_path, spec, eval_set, workdir)
        return
    with ManagedServer(config.command(), config.base_url, Path(workdir) / "vllm.log",
                       env=config.env()) as started:
        yield _vllm_opener(started, adapter_paths, base_path, spec, eval_set, workdir)


def _transformers_opener(base_path: str, loras: list[tuple[EvalTarget, Path]],
                         options: EvalOptions, dtype: str) -> Opener:
    from evaluation.backends.transformers_backend import TransformersBackend

    local = TransformersBackend(base_path, dtype=dtype,  # type: ignore[arg-type]
                                batch_size=options.batch_size)
    refused: dict[str, str] = {}
    for target, folder in loras:
        try:
            local.add_adapter(target.adapter_name, folder)
        except Exception as error:  # reported when this adapter's turn comes
            refused[target.adapter_name] = f"adapter {target.adapter_name} ({folder}) did " \
                                           f"not load: {error}"

    @contextmanager
    def open_backend(name: str | None) -> Iterator[Backend]:
        if name in refused:
            raise AdapterError(refused[name])
        local.use(name)
        yield local

    return open_backend


def _vllm_opener(server: ManagedServer, paths: dict[str, Path], base_path: str,
                 spec: EvalJobSpec, eval_set: EvalSet, workdir: str) -> Opener:
    from evaluation.backends.endpoint import EndpointBackend

    @contextmanager
    def open_backend(name: str | None) -> Iterator[Backend]:
        served = name or BASE_NAME
        if name is not None:
            try:
                load_adapter(server.base_url, name, paths[name])
            except AdapterError:
                server.check()  # a server that died is the job's failure, not the adapter's
                raise
        endpoint = EndpointBackend(server.base_url, served, base_path)
        backend_obj: Backend = endpoint
        if spec.scorer == "lighteval":
            backend_obj = LightevalBackend(endpoint, server.base_url, eval_set.questions,
                                           Path(workdir) / "lighteval")
        try:
            yield backend_obj
        except Exception:
            server.check()  # died mid-run: say so, with its last log lines
            raise
        finally:
            if name is not None and server.alive():
                unload_adapter(server.base_url, name)

    return open_backend
