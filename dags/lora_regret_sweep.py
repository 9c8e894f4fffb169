"""lora_regret_sweep: train every run of a sweep on a cluster, evaluate, publish.

Trigger it from the UI: pick a sweep preset (default: the 52-run reference grid) and a
cluster profile, optionally override grid axes. The conf is validated before anything is
submitted; runs that already finished in MLflow are skipped unless forced. Each run is one
cluster job, sensed in the triggerer (no worker slot held while it trains); then each base
model is evaluated (LEXam) as one job, and the sweep-results Asset is updated so the
report DAG runs. The logic lives in training.sweep_conf and cluster_jobs; this file wires.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import yaml
from airflow.sdk import Asset, Param, dag, task
from cluster_jobs.operators import ClusterJobOperator
from cluster_jobs.profiles import profile_names

from training.presets import CONFIGS_DIR, load_presets

SWEEP_RESULTS = Asset(name="lora_regret_sweep_results", uri="lora-regret://sweep-results")
EXIT_DIVERGED = 3  # a diverged run is a result (recorded in MLflow), not a task failure
EXIT_OOM = 4  # the training job caught an out-of-memory error (recorded as `oom`)
SPEC_FILE = "spec.yaml"


def _layout(spec: Any) -> dict[str, int] | None:
    """The job's nodes and GPUs when the spec names them (else the profile decides)."""
    layout = {k: getattr(spec, k) for k in ("nodes", "gpus_per_node")
              if getattr(spec, k) is not None}
    return layout or None


def _sweep_presets() -> list[str]:
    return sorted(p.stem for p in (CONFIGS_DIR / "sweeps").glob("*.yaml"))


def _list_param(description: str, items: dict[str, Any], title: str,
                choices: list[str] | None = None) -> Param:
    """An optional list axis; with ``choices`` the form shows a multi-select."""
    extra = {"examples": choices} if choices else {}
    return Param(None, type=["null", "array"], items=items, title=title,
                 description=description + " Empty: the preset's values.", **extra)


PARAMS = {
    "sweep": Param("reference", type="string", enum=_sweep_presets(), title="Sweep preset",
                   description="Grid from configs/sweeps/ (reference = the 52-run study)."),
    "models": _list_param("Model presets (configs/models.yaml).", {"type": "string"}, "Models",
                          choices=sorted(load_presets())),
    "methods": _list_param("lora and/or full.", {"type": "string", "enum": ["lora", "full"]},
                           "Methods", choices=["lora", "full"]),
    "learning_rates": _list_param("Learning rates.", {"type": "number"}, "Learning rates"),
    "ranks": _list_param("LoRA ranks (powers of two).", {"type": "integer"}, "LoRA ranks"),
    "seeds": _list_param("Random seeds.", {"type": "integer"}, "Seeds"),
    "nodes": _list_param("Engineering axis: nodes per run.", {"type": "integer"}, "Nodes"),
    "gpus_per_node": _list_param("Engineering axis: GPUs per node (one process each).",
                                 {"type": "integer"}, "GPUs per node"),
    "zero_stages": _list_param("Engineering axis: DeepSpeed ZeRO stages (0, 2, 3).",
                               {"type": "integer", "enum": [0, 2, 3]}, "ZeRO stages"),
    "per_device_batches": _list_param("Engineering axis: per-device batch sizes.",
                                      {"type": "integer"}, "Per-device batches"),
    "global_batch": Param(None, type=["null", "integer"], title="Global batch",
                          description="Samples per optimizer step kept across layouts "
                                      "(default: per-device batch x accumulation)."),
    "batch_scaling": Param(None, type=["null", "string"], enum=[None, "fixed_global",
                           "per_device"], title="Batch scaling",
                           description="fixed_global (default): accumulation derived per "
                                       "layout; per_device: the global batch grows."),
    "max_steps": Param(None, type=["null", "integer"], title="Max steps",
                       description="Optimizer steps per run (overrides epochs)."),
    "epochs": Param(None, type=["null", "number"], title="Epochs"),
    "data_source": Param(None, type=["null", "string"], title="Data source",
                         description="synthetic, hub:<dataset id>, or a JSONL/Parquet path."),
    "experiment": Param(None, type=["null", "string"], title="MLflow experiment"),
    "sweep_id": Param(None, type=["null", "string"], title="Sweep id",
                      description="Default: the preset name (+ a hash of the overrides)."),
    "cluster": Param(os.environ.get("LORA_REGRET_CLUSTER", "local"), type="string",
                     enum=profile_names(), title="Cluster profile",
                     description="configs/clusters/<name>.yaml; local runs jobs here."),
    "force": Param(False, type="boolean", title="Force re-run",
                   description="Train runs even if an identical run already finished."),
    "evaluate": Param(True, type="boolean", title="Evaluate on LEXam"),
    "eval_max_questions": Param(None, type=["null", "integer"], title="LEXam questions",
                                description="Evaluate on at most N questions (default all)."),
    "eval_max_new_tokens": Param(None, type=["null", "integer"], title="LEXam answer budget",
                                 description="Tokens generated per answer (default: the "
                                             "official long budget; small on CPU)."),
    "eval_data": Param(None, type=["null", "string"], title="LEXam data",
                       description="Local LEXam JSONL, 'synthetic' or hub:REPO."),
}


@dag(
    dag_id="lora_regret_sweep",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["lora-regret"],
    doc_md=__doc__,
    max_active_runs=4,
)
def lora_regret_sweep() -> None:
    @task
    def plan(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate the conf, expand the grid, drop finished runs, render job requests."""
        from airflow.sdk.exceptions import AirflowFailException
        from cluster_jobs import JOB_DIR_PLACEHOLDER, JOB_ID_PLACEHOLDER, JobRequest
        from cluster_jobs.profiles import ProfileError, load_profile

        from training.finished import finished_spec_hashes
        from training.spec import SpecError
        from training.sweep_conf import parse_conf, plan_runs

        try:
            conf = parse_conf(dict(params or {}))
            profile = load_profile(conf.cluster)
            per_model = {m: profile.resources_for(m).job_settings for m in load_presets()}
            specs = plan_runs(conf, per_model=per_model, output_dir=profile.outputs_dir)
        except (SpecError, ProfileError) as error:
            raise AirflowFailException(str(error)) from None
        done = set() if conf.force else finished_spec_hashes(specs)
        pending = [s for s in specs if s.spec_hash not in done]
        print(f"sweep {conf.derived_sweep_id()}: {len(specs)} runs, {len(done)} already "
              f"finished, {len(pending)} to train on {profile.name}")
        python = profile.python_executable()
        train = [
            {"job": JobRequest(
                name=f"lr-{spec.run_name}-{spec.spec_hash[:6]}",
                argv=(python, "-m", "training", "--spec", f"{JOB_DIR_PLACEHOLDER}/{SPEC_FILE}",
                      "--job-id", JOB_ID_PLACEHOLDER),
                files={SPEC_FILE: spec.to_yaml()},
                resources_key=spec.model,
                resources=_layout(spec),
            ).model_dump(mode="json"), "profile": profile.name}
            for spec in pending
        ]
        models = sorted({spec.model for spec in pending}) if conf.evaluate else []
        evaluate = []
        for model in models:
            argv = [python, "-m", "evaluation", "sweep", "--sweep-id", conf.derived_sweep_id(),
                    "--model", model]
            if conf.eval_max_questions:
                argv += ["--max-questions", str(conf.eval_max_questions)]
            if conf.eval_max_new_tokens:
                argv += ["--max-new-tokens", str(conf.eval_max_new_tokens)]
            if conf.eval_data:
                argv += ["--data", conf.eval_data]
            if conf.experiment:
                argv += ["--experiment", conf.experiment]
            job = JobRequest(name=f"lr-eval-{model}", argv=tuple(argv), resources_key="evaluate")
            evaluate.append({"job": job.model_dump(mode="json"), "profile": profile.name})
        return {"sweep_id": conf.derived_sweep_id(), "train": train, "evaluate": evaluate}

    @task
    def train_jobs(plan: dict[str, Any]) -> list[dict[str, Any]]:
        return plan["train"]

    @task(trigger_rule="all_done")
    def record(plan: dict[str, Any], ti: Any = None) -> list[dict[str, str]]:
        """Write what the cluster said (OOM, kills, GPU-hours) into each run, also for
        jobs that died before they could (their task failed; this runs anyway)."""
        from training.outcomes import record_job_result
        from training.spec import RunSpec

        if not plan["train"]:
            return []
        recorded = []
        for index, entry in enumerate(plan["train"]):  # map index i ran plan["train"][i]
            result = ti.xcom_pull(task_ids="train", key=ClusterJobOperator.RESULT_XCOM_KEY,
                                  map_indexes=index)
            if not result:
                continue  # never submitted, or still to be sensed by a retry
            spec = RunSpec.model_validate(yaml.safe_load(entry["job"]["files"][SPEC_FILE]))
            recorded.append(record_job_result(spec, result))
            print(f"{spec.run_name}: {result['state']} -> {recorded[-1]['recorded']}")
        return recorded

    @task
    def evaluation_jobs(plan: dict[str, Any]) -> list[dict[str, Any]]:
        return plan["evaluate"]

    @task(outlets=[SWEEP_RESULTS], trigger_rule="none_failed")
    def publish(plan: dict[str, Any], outlet_events: Any = None) -> str:
        """Mark the sweep's results as updated; the report DAG is scheduled on this."""
        outlet_events[SWEEP_RESULTS].extra = {"sweep_id": plan["sweep_id"]}
        return plan["sweep_id"]

    the_plan = plan()
    train = ClusterJobOperator.partial(
        task_id="train",
        retries=2,  # transient errors only: deterministic failures fail at once
        retry_delay=timedelta(seconds=30),
        accept_exit_codes=(EXIT_DIVERGED,),
        exit_code_states={EXIT_OOM: "OUT_OF_MEMORY"},
        map_index_template="{{ task.job.name }}",
    ).expand_kwargs(train_jobs(the_plan))
    train >> record(the_plan)
    eval_jobs = evaluation_jobs(the_plan)
    train >> eval_jobs
    evaluate = ClusterJobOperator.partial(
        task_id="evaluate",
        retries=2,
        retry_delay=timedelta(seconds=30),
        map_index_template="{{ task.job.name }}",
    ).expand_kwargs(eval_jobs)
    evaluate >> publish(the_plan)


lora_regret_sweep()
