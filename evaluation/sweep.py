"""Evaluate a sweep's models of one base model in one process (or one server).

The untouched base model is evaluated into the sweep's baseline run, then every finished
run of the sweep and base model: LoRA adapters from the registry (tag
``registered_model_uri``), full fine-tunes from their checkpoint (tag ``checkpoint_path``).

- ``transformers`` (CPU, tests): the base weights are loaded once and adapters attached
  by name; full fine-tunes load as models of their own.
- ``vllm`` (GPUs): one server for the base model with all adapters (multi-LoRA), then one
  server per full fine-tune; evaluated through the OpenAI-compatible endpoint.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Literal

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from evaluation.backends import Backend
from evaluation.models import adapter_rank, resolve_adapter, resolve_base
from evaluation.runner import EvalOptions, EvalReport, EvalSet, build_eval_set, evaluate
from evaluation.tracking import DEFAULT_EXPERIMENT, baseline_run, ensure_experiment, log_report

SweepBackend = Literal["transformers", "vllm"]


class SweepTarget(BaseModel):
    """One finished training run to evaluate."""

    run_id: str
    run_name: str
    method: Literal["lora", "full"]
    model_uri: str | None = None
    checkpoint_path: str | None = None

    @property
    def adapter_name(self) -> str:
        """The run name as a PEFT/vLLM adapter name (PEFT refuses dots in module names)."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.run_name)


def find_targets(client: MlflowClient, sweep_id: str, model: str,
                 experiment: str = DEFAULT_EXPERIMENT) -> list[SweepTarget]:
    """Finished runs of the sweep and base model that have something to evaluate."""
    experiment_id = ensure_experiment(client, experiment)
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.sweep_id = '{sweep_id}' and tags.model = '{model}' "
                       "and tags.outcome = 'finished'"),
        max_results=5000,
    )
    targets = []
    for run in runs:
        tags = run.data.tags
        method = tags.get("method")
        if method == "lora" and tags.get("registered_model_uri"):
            targets.append(SweepTarget(run_id=run.info.run_id, run_name=run.info.run_name,
                                       method="lora", model_uri=tags["registered_model_uri"]))
        elif method == "full" and tags.get("checkpoint_path"):
            targets.append(SweepTarget(run_id=run.info.run_id, run_name=run.info.run_name,
                                       method="full", checkpoint_path=tags["checkpoint_path"]))
        else:
            print(f"[evaluation] skipping run {run.info.run_name}: no registered model",
                  file=sys.stderr)
    return sorted(targets, key=lambda t: t.run_name)


Evaluator = Callable[[Backend, str | None], EvalReport]


def evaluate_sweep(sweep_id: str, model: str, options: EvalOptions,
                   backend: SweepBackend = "transformers",
                   experiment: str = DEFAULT_EXPERIMENT, dtype: str = "bfloat16",
                   server_port: int | None = None) -> list[EvalReport]:
    """Baseline plus every finished run; each report is logged into its run."""
    client = MlflowClient()
    eval_set = build_eval_set(options)
    targets = find_targets(client, sweep_id, model, experiment)
    base_path = resolve_base(model)
    print(f"[evaluation] sweep {sweep_id}, {model}: baseline + {len(targets)} runs on "
          f"{len(eval_set.questions)} questions (eval set {eval_set.eval_hash})",
          file=sys.stderr)
    reports: list[EvalReport] = []
    baseline_id = baseline_run(client, model, sweep_id, experiment)

    def record(report: EvalReport, run_id: str) -> None:
        log_report(client, run_id, report)
        reports.append(report.model_copy(update={"run_id": run_id}))

    with tempfile.TemporaryDirectory(prefix="lexam-adapters-") as workdir:
        loras = [(t, resolve_adapter(t.model_uri or "", workdir))
                 for t in targets if t.method == "lora"]
        fulls = [t for t in targets if t.method == "full"]
        with _base_backends(backend, base_path, loras, options, dtype, server_port,
                            workdir) as get:
            record(_run(get(None), eval_set, options, model, None, backend), baseline_id)
            for target, _ in loras:
                report = _run(get(target.adapter_name), eval_set, options, model,
                              target.model_uri, backend)
                record(report, target.run_id)
        for target in fulls:
            path = target.checkpoint_path or ""
            with _base_backends(backend, path, [], options, dtype, server_port,
                                workdir) as get:
                record(_run(get(None), eval_set, options, path, None, backend), target.run_id)
    return reports


def _run(backend_obj: Backend, eval_set: EvalSet, options: EvalOptions, model: str,
         adapter: str | None, backend: str) -> EvalReport:
    print(f"[evaluation] evaluating {adapter or model}", file=sys.stderr)
    return evaluate(backend_obj, eval_set, options, model=model, adapter=adapter,
                    backend_name=backend)


@contextmanager
def _base_backends(backend: SweepBackend, base_path: str,
                   loras: list[tuple[SweepTarget, Path]], options: EvalOptions, dtype: str,
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
