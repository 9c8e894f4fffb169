"""A synthetic engineering sweep shaped like the reference study, logged into real MLflow.

The runs are the ``scaling-reference`` preset's (the same tags, params and metric names as
the training job and the sweep DAG's record task write): 8B full FT scales almost
linearly from 1 to 8 nodes with ZeRO-0; 70B runs out of memory with ZeRO-0 and ZeRO-2 on
every node count and with ZeRO-3 on 2 nodes, and works with ZeRO-3 on 4 and 8 nodes.
"""

from __future__ import annotations

import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from contracts.spec import RunSpec
from contracts.sweep import load_named_sweep
from tracking.runs import memory_plan_record

SAMPLES_PER_GPU_S = {"apertus-8b": 2.0, "apertus-70b": 0.25}
# Scaling efficiency by nodes against 1 node (8B) / the first working layout (70B).
EFFICIENCY = {"apertus-8b": {1: 1.0, 2: 0.98, 4: 0.96, 8: 0.94},
              "apertus-70b": {4: 1.0, 8: 0.85}}
FINAL_LOSS = {"apertus-8b": 0.62, "apertus-70b": 0.58}
OOM_ELAPSED_S = 300.0


def works(spec: RunSpec) -> bool:
    return spec.model == "apertus-8b" or (spec.zero_stage == 3 and (spec.nodes or 1) >= 4)


def log_scaling_sweep(tracking_uri: str, sweep_id: str = "scaling-reference",
                      experiment: str = "lora-regret") -> dict[str, RunSpec]:
    """Log every run of the preset; returns spec_hash -> spec."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    # Planned against GH200s (96 GB), as the sweep's plan on the alps profile does.
    specs = load_named_sweep("scaling-reference").expand(sweep_id=sweep_id,
                                                         experiment=experiment,
                                                         gpu_memory_gb=96.0)
    now = int(time.time() * 1000)
    for spec in specs:
        world = spec.world_size or 1
        plan_metrics, plan_tags = memory_plan_record(spec)
        run_id = client.create_run(experiment_id, run_name=spec.run_name,
                                   tags={**spec.tags(), **plan_tags}).info.run_id
        params = [Param(k, str(v)) for k, v in spec.model_dump(mode="json").items()
                  if not isinstance(v, dict)]
        tags = [RunTag("job_id", str(1000 + len(spec.run_name)))]
        metrics = [Metric("train/world_size", world, now, 0)]
        metrics += [Metric(k, v, now, 0) for k, v in plan_metrics.items()]
        if works(spec):
            efficiency = EFFICIENCY[spec.model][spec.nodes or 1]
            samples_s = SAMPLES_PER_GPU_S[spec.model] * world * efficiency
            runtime = (spec.max_steps or 1) * (spec.global_batch or 1) / samples_s
            tags.append(RunTag("outcome", "finished"))
            metrics += [
                Metric("train/samples_per_second_mean", samples_s, now, 0),
                Metric("train/runtime_s", runtime, now, 0),
                Metric("train/time_to_first_step_s", 120.0 if spec.model == "apertus-8b"
                       else 600.0, now, 0),
                Metric("train/final_loss", FINAL_LOSS[spec.model], now, 0),
                Metric("cost/gpu_hours", runtime * world / 3600, now, 0),
                # The cluster's accounting includes start-up: a little more than runtime.
                Metric("cost/gpu_hours_accounted", (runtime + 60) * world / 3600, now, 0),
                Metric("memory/peak_accelerator_mb", 60_000.0, now, 0),
            ]
            metrics += [Metric("train/tokens_per_second", samples_s * 2048, now, step)
                        for step in range(1, 6)]
            metrics += [Metric("train/loss", FINAL_LOSS[spec.model] + 0.5 / step, now, step)
                        for step in range(1, 6)]
            status = "FINISHED"
        else:
            tags += [RunTag("outcome", "oom"), RunTag(
                "failure_reason", "job failed, out of memory in the log: torch.OutOfMemoryError: "
                "CUDA out of memory. Tried to allocate 7.00 GiB")]
            metrics.append(Metric("cost/gpu_hours_accounted", OOM_ELAPSED_S * world / 3600,
                                  now, 0))
            status = "FAILED"
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run_id, status=status)
    return {spec.spec_hash: spec for spec in specs}
