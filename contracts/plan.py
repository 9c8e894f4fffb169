"""The sweep's plan: from a validated trigger conf to the jobs to submit.

A plain function (no Airflow, no MLflow): the DAG's ``plan`` task calls it with a lookup
of the runs that already finished, then only wires the result into mapped tasks. Every
job starts from a spec file written into its job folder (``spec.yaml`` for training,
``eval.yaml`` for evaluation), so no argument list is assembled by hand anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.conf import NightlyConf, SweepConf, plan_runs
from contracts.errors import SpecError
from contracts.evaluation import EvalJobSpec, EvalOptions
from contracts.jobs import JOB_DIR_PLACEHOLDER, JOB_ID_PLACEHOLDER, JobRequest
from contracts.memory import MemoryEstimate, plan_memory
from contracts.outcomes import EXIT_DIVERGED, EXIT_OOM
from contracts.presets import load_presets
from contracts.profiles import ClusterProfile, ResourceRequest
from contracts.spec import RunSpec

TRAIN_SPEC_FILE = "spec.yaml"
EVAL_SPEC_FILE = "eval.yaml"
EVAL_RESULTS_DIR = "results"
# Exit codes of a training job that are results, not failures of the task.
TRAIN_ACCEPTED_EXIT_CODES = (EXIT_DIVERGED,)
TRAIN_EXIT_CODE_STATES = {EXIT_OOM: "OUT_OF_MEMORY"}

# The most runs one trigger of the sweep may plan. The DAG maps one task per run over
# ``MAX_RUNS // MAP_CHUNK`` lists of at most ``MAP_CHUNK`` runs each (Airflow maps at most
# ``[core] max_map_length`` = 1024 items from one list by default).
MAX_RUNS = 4096
MAP_CHUNK = 1024

FinishedLookup = Callable[[Iterable[RunSpec]], set[str]]


def check_size(conf: SweepConf, limit: int = MAX_RUNS) -> int:
    """The grid's size, counted before any run is expanded or rendered; SpecError when it
    is over ``limit`` (a grid of a million runs would take minutes and gigabytes to plan)."""
    size = conf.sweep_spec().size()
    if size > limit:
        raise SpecError(
            f"grid: {size} runs is more than one sweep may have ({limit}); use fewer values "
            "for learning_rates, ranks, seeds, models or the engineering axes, or split the "
            "sweep into several triggers (each with its own sweep_id)")
    return size


class TrainJob(BaseModel):
    """One training run to submit: its spec and the job that runs it."""

    model_config = ConfigDict(frozen=True)

    spec: RunSpec
    job: JobRequest


class EvalJob(BaseModel):
    """One evaluation job (one base model) and the spec it starts from."""

    model_config = ConfigDict(frozen=True)

    spec: EvalJobSpec
    job: JobRequest


class SweepPlan(BaseModel):
    """What one trigger of the sweep submits."""

    model_config = ConfigDict(frozen=True)

    sweep_id: str
    profile: str
    n_runs: int
    n_finished: int
    train: tuple[TrainJob, ...]
    evaluate: tuple[EvalJob, ...]
    force: bool = False  # train again even what already finished (claims are taken over)
    memory: tuple[MemoryEstimate, ...] = ()  # the memory plan of every run not finished
    held_back: tuple[str, ...] = ()  # run names predicted OOM and not submitted

    def summary(self) -> str:
        head = (f"sweep {self.sweep_id}: {self.n_runs} runs, {self.n_finished} already "
                f"finished, {len(self.train)} to train, {len(self.evaluate)} evaluation "
                f"job(s) on {self.profile}")
        oom = [m for m in self.memory if m.predicted_oom]
        if self.held_back:
            head += (f"; {len(self.held_back)} predicted OOM held back (set "
                     "submit_predicted_oom to submit them)")
        elif oom:
            head += f"; {len(oom)} predicted OOM submitted anyway (submit_predicted_oom)"
        lines = [f"  {'predicted OOM' if m.predicted_oom else m.verdict}: {m.line()}"
                 for m in self.memory if m.total_gb is not None]
        return "\n".join([head, *(["memory plan:", *lines] if lines else [])])

    def job_kwargs(self, jobs: Iterable[TrainJob | EvalJob]) -> list[dict[str, Any]]:
        return job_kwargs(jobs, self.profile)


def job_kwargs(jobs: Iterable[TrainJob | EvalJob], profile: str) -> list[dict[str, Any]]:
    """The cluster job operator's mapped keyword arguments, one dict per job."""
    return [{"job": item.job.model_dump(mode="json"), "profile": profile} for item in jobs]


def _layout(spec: RunSpec) -> ResourceRequest | None:
    """The job's nodes and GPUs when the spec names them (else the profile decides)."""
    layout = {k: getattr(spec, k) for k in ("nodes", "gpus_per_node")
              if getattr(spec, k) is not None}
    return ResourceRequest(**layout) if layout else None


def check_layout(spec: RunSpec, profile: ClusterProfile) -> None:
    """A layout the cluster can give one job (the form's bounds are far wider)."""
    if (spec.nodes or 1) > profile.max_nodes:
        raise SpecError(f"nodes: {spec.nodes} is more than cluster profile {profile.name!r} "
                        f"allows one job (max_nodes: {profile.max_nodes})")
    if (spec.gpus_per_node or 0) > profile.max_gpus_per_node:
        raise SpecError(f"gpus_per_node: {spec.gpus_per_node} is more than cluster profile "
                        f"{profile.name!r} has (max_gpus_per_node: {profile.max_gpus_per_node})")


def training_job(spec: RunSpec, profile: ClusterProfile) -> JobRequest:
    return JobRequest(
        name=f"lr-{spec.run_name}-{spec.spec_hash[:6]}",
        argv=(profile.python_executable(), "-m", "training",
              "--spec", f"{JOB_DIR_PLACEHOLDER}/{TRAIN_SPEC_FILE}", "--job-id", JOB_ID_PLACEHOLDER),
        files={TRAIN_SPEC_FILE: spec.to_yaml()},
        claim=spec.spec_hash,  # one spec trains once, however often the sweep is triggered
        resources_key=spec.model,
        resources=_layout(spec),
    )


def evaluation_job(spec: EvalJobSpec, profile: ClusterProfile, name: str) -> JobRequest:
    """The job of one evaluation spec; shared by the sweep and the nightly DAG."""
    return JobRequest(
        name=name,
        argv=(profile.python_executable(), "-m", "evaluation",
              "--spec", f"{JOB_DIR_PLACEHOLDER}/{EVAL_SPEC_FILE}",
              "--output-dir", f"{JOB_DIR_PLACEHOLDER}/{EVAL_RESULTS_DIR}"),
        files={EVAL_SPEC_FILE: spec.to_yaml()},
        resources_key="evaluate",
    )


def eval_job_settings(conf: SweepConf) -> dict[str, Any]:
    """What the sweep's evaluation jobs add to LEXam: held-out SJP and checkpoints."""
    settings: dict[str, Any] = {"checkpoints": conf.checkpoint_every != 0}
    if conf.sjp_eval_cases:
        settings["sjp_max_cases"] = conf.sjp_eval_cases
    return settings


def eval_options(conf: SweepConf) -> EvalOptions:
    settings: dict[str, Any] = {}
    if conf.eval_data:
        settings["data"] = conf.eval_data
    if conf.eval_max_questions:
        settings["max_questions"] = conf.eval_max_questions
    if conf.eval_max_new_tokens:
        settings["max_new_tokens"] = conf.eval_max_new_tokens
    return EvalOptions(**settings)


def plan_sweep(conf: SweepConf, profile: ClusterProfile, finished: FinishedLookup) -> SweepPlan:
    """Expand the conf's grid on ``profile``, drop runs that already finished (unless
    forced) and describe every job. Raises SpecError naming the first bad field, or the
    grid when it has more than MAX_RUNS runs (checked before anything is expanded)."""
    check_size(conf)
    for field in ("data_source", "eval_data"):
        if getattr(conf, field):
            profile.check_form_path(getattr(conf, field), field)
    per_model = {m: _model_settings(profile, m) for m in load_presets()}
    specs = plan_runs(conf, per_model=per_model, output_dir=profile.outputs_dir)
    for spec in specs:
        check_layout(spec, profile)
    done = set() if conf.force else finished(specs)
    pending = [s for s in specs if s.spec_hash not in done]
    sweep_id = conf.derived_sweep_id()
    memory = plan_memory(pending, lambda s: profile.resources_for(s.model, _layout(s)))
    held_back = set() if conf.submit_predicted_oom else {
        m.run_name for m in memory if m.predicted_oom}
    pending = [s for s in pending if s.run_name not in held_back]
    train = tuple(TrainJob(spec=s, job=training_job(s, profile)) for s in pending)
    evaluate: tuple[EvalJob, ...] = ()
    if conf.evaluate:  # the models that train now; already evaluated runs are skipped
        options = eval_options(conf)
        evaluate = tuple(
            EvalJob(spec=(spec := EvalJobSpec(
                model=model, sweep_id=sweep_id, experiment=specs[0].experiment,
                options=options, backend=conf.eval_backend, scorer=conf.eval_scorer,
                skip_evaluated=not conf.force, **eval_job_settings(conf))),
                job=evaluation_job(spec, profile, name=f"lr-eval-{model}"))
            for model in sorted({s.model for s in pending})
        )
    return SweepPlan(sweep_id=sweep_id, profile=profile.name, n_runs=len(specs),
                     n_finished=len(done & {s.spec_hash for s in specs}), train=train,
                     evaluate=evaluate, force=conf.force, memory=memory,
                     held_back=tuple(sorted(held_back)))


def _model_settings(profile: ClusterProfile, model: str) -> dict[str, Any]:
    """What the profile sets on a model's runs: its job settings (e.g. the ZeRO stage) and
    the GPU memory its memory plan is checked against."""
    resources = profile.resources_for(model)
    memory = {"gpu_memory_gb": resources.gpu_memory_gb} if resources.gpu_memory_gb else {}
    return {**resources.job_settings, **memory}


def plan_nightly(conf: NightlyConf, profile: ClusterProfile,
                 targets: Iterable[tuple[str, str]]) -> list[EvalJob]:
    """One evaluation job per base model for ``targets`` ((model, run id) pairs): the
    registered versions chosen for tonight. Runs already evaluated on exactly this set are
    skipped by the job itself unless forced."""
    by_model: dict[str, list[str]] = {}
    for model, run_id in targets:
        by_model.setdefault(model, [])
        if run_id not in by_model[model]:
            by_model[model].append(run_id)
    jobs = []
    known = load_presets()
    for model, run_ids in sorted(by_model.items()):
        if model not in known:
            print(f"[nightly] {len(run_ids)} version(s) of {model!r} skipped: not a model "
                  "preset (configs/models.yaml)", file=sys.stderr)
            continue
        spec = EvalJobSpec(model=model, run_ids=tuple(run_ids), baseline=False,
                           options=conf.options(), backend=conf.backend, dtype=conf.dtype,
                           skip_evaluated=not conf.force)
        jobs.append(EvalJob(spec=spec, job=evaluation_job(spec, profile,
                                                          name=f"lr-nightly-{model}")))
    return jobs
