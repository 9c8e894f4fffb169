"""One evaluation job (an ``EvalJobSpec``): one base model, its baseline and its runs.

Targets are the runs the spec names (``run_ids``: the nightly's registered versions) or every
finished run of the sweep and base model: LoRA adapters from the registry (tag
``registered_model_uri``), full fine-tunes from their checkpoint (tag ``checkpoint_path``).
With ``skip_evaluated`` a run already tagged with this evaluation set's hash is skipped.

- ``transformers`` (CPU, tests): the base weights are loaded once and adapters attached
  by name; full fine-tunes load as models of their own.
- ``vllm``: one server for the base model with all adapters (multi-LoRA), then one
  server per full fine-tune; evaluated through the OpenAI-compatible endpoint.

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
from contextlib import ExitStack, contextmanager
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
from evaluation.models import adapter_rank, resolve_adapter, resolve_base, resolve_dtype
from evaluation.runner import EvalReport, EvalSet, build_eval_set, evaluate
from evaluation.tracking import baseline_run, log_report, parse_model_uri
from tracking.store import ensure_experiment

SweepBackend = Literal["transformers", "vllm"]


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


def _tag_version(client: MlflowClient, model_uri: str | None, eval_hash: str) -> None:
    """The registry version says which evaluation set its run was last evaluated on."""
    if model_uri and model_uri.startswith("models:/"):
        name, version = parse_model_uri(model_uri)
        client.set_model_version_tag(name, version, TAG_LEXAM_EVAL_HASH, eval_hash)


def run_eval_job(spec: EvalJobSpec, output_dir: str | Path,
                 server_port: int | None = None) -> list[EvalReport]:
    """Evaluate the spec's baseline and targets; each report is written, then logged."""
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
            _tag_version(client, target.model_uri if target else None, report.eval_hash)
            reports.append(report)
        extras.after_report(report, run_id, backend, step=step, baseline=target is None)

    with tempfile.TemporaryDirectory(prefix="lexam-adapters-") as workdir:
        loras = [(t, resolve_adapter(t.model_uri or "", workdir))
                 for t in targets if t.method == "lora"]
        loras += [(t, Path(t.checkpoint_path or "")) for t in checkpoints if t.method == "lora"]
        fulls = [t for t in [*targets, *checkpoints] if t.method == "full"]
        if baseline_id or loras:
            with _base_backends(spec.backend, base_path, loras, options, dtype, server_port,
                                workdir) as get:
                if baseline_id:
                    record(_run(base := get(None), eval_set, options, spec.model, None,
                                spec.backend), base, None)
                for target, _ in loras:
                    backend = get(target.adapter_name)
                    report = _run(backend, eval_set, options, spec.model,
                                  target.model_uri or target.checkpoint_path, spec.backend)
                    record(report, backend, target)
        for target in fulls:
            path = target.checkpoint_path or ""
            with _base_backends(spec.backend, path, [], options, dtype, server_port,
                                workdir) as get:
                record(_run(backend := get(None), eval_set, options, path, None, spec.backend),
                       backend, target)
    return reports


def _run(backend_obj: Backend, eval_set: EvalSet, options: EvalOptions, model: str,
         adapter: str | None, backend: str) -> EvalReport:
    print(f"[evaluation] evaluating {adapter or model}", file=sys.stderr)
    return evaluate(backend_obj, eval_set, options, model=model, adapter=adapter,
                    backend_name=backend)


@contextmanager
def _base_backends(backend: SweepBackend, base_path: str,
                   loras: list[tuple[EvalTarget, Path]], options: EvalOptions, dtype: str,
                   server_port: int | None, workdir: str
                   ) -> Iterator[Callable[[str | None], Backend]]:
    """A function giving the backend for the base (None) or one adapter by run name."""
    if backend == "transformers":
        from evaluation.backends.transformers_backend import TransformersBackend

        local = TransformersBackend(base_path, dtype=dtype,  # type: ignore[arg-type]
                                    batch_size=options.batch_size)
        for target, folder in loras:
            local.add_adapter(target.adapter_name, folder)

        def pick(name: str | None) -> Backend:
            local.use(name)
            return local

        yield pick
        return
    from evaluation.backends.endpoint import EndpointBackend
    from evaluation.serving import LoraModule, ManagedServer, VllmServerConfig, free_port

    config = VllmServerConfig(
        model=base_path, port=server_port or free_port(),
        adapters=tuple(LoraModule(name=t.adapter_name, path=str(folder), rank=adapter_rank(folder))
                       for t, folder in loras),
    )
    with ExitStack() as stack:
        stack.enter_context(ManagedServer(config.command(), config.base_url,
                                          Path(workdir) / "vllm.log"))

        def served(name: str | None) -> Backend:
            return EndpointBackend(config.base_url, name or config.served_name, base_path)

        yield served
