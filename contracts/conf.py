"""The sweep DAG's trigger conf, validated, and turned into the run specs to train.

The conf comes from the Airflow trigger form (untrusted). It names a sweep preset
(configs/sweeps/<name>.yaml) and may override grid axes and shared settings; every value
is validated here, and every resulting run spec again by RunSpec, before anything is
submitted. Errors name the conf field (``learning_rates.1: ...``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from contracts.errors import SpecError, describe_errors, parse
from contracts.evaluation import LEXAM_HUB_REPO, Dtype, EvalOptions, Scorer
from contracts.evaluation import Backend as EvalBackend
from contracts.presets import known_model, load_presets
from contracts.safe import SafeName, SafePath
from contracts.spec import DEFAULT_HELDOUT_FRACTION, MAX_RANK, RunSpec
from contracts.sweep import GridBlock, SweepSpec, load_named_sweep, sweep_presets

CLUSTER_ENV = "LORA_REGRET_CLUSTER"

AXES = ("models", "methods", "learning_rates", "ranks", "seeds")
INFRA_AXES = ("nodes", "gpus_per_node", "zero_stages", "per_device_batches")
# Numbers from a form are taken as given: no bool-to-number or string-to-number coercion.
LearningRate = Annotated[float, Field(strict=True, gt=0, le=1.0)]
Rank = Annotated[int, Field(strict=True, gt=0, le=MAX_RANK)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
NodeCount = Annotated[int, Field(strict=True, ge=1, le=4096)]
GpuCount = Annotated[int, Field(strict=True, ge=0, le=64)]
Batch = Annotated[int, Field(strict=True, gt=0, le=4096)]
Count = Annotated[int, Field(strict=True, gt=0)]
Method = Literal["lora", "full"]
ZeroStage = Literal[0, 2, 3]


def _choices(provider):
    """A form field whose values are offered as a list (computed when the form is built)."""
    def extra(schema: dict[str, Any]) -> None:
        values = provider()
        if any(kind.get("type") == "array" for kind in [schema, *schema.get("anyOf", [])]):
            schema["examples"] = values  # Airflow shows a multi-select for arrays
        else:
            schema["enum"] = values
    return extra


def _cluster_default() -> str:
    return os.environ.get(CLUSTER_ENV, "local")


def _models() -> list[str]:
    return sorted(load_presets())


def _clusters() -> list[str]:
    from contracts.profiles import profile_names

    return profile_names()


class SweepConf(BaseModel):
    """What a user may set when triggering ``lora_regret_sweep`` (the trigger form is
    generated from this model: each field's title, description, default and bounds)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sweep: SafeName = Field(
        default="reference", title="Sweep preset", json_schema_extra=_choices(sweep_presets),
        description="Grid from configs/sweeps/ (reference = the 52-run study).")
    models: tuple[str, ...] | None = Field(
        default=None, title="Models", json_schema_extra=_choices(_models),
        description="Model presets (configs/models.yaml). Empty: the preset's values.")
    methods: tuple[Method, ...] | None = Field(
        default=None, title="Methods", json_schema_extra=_choices(lambda: ["lora", "full"]),
        description="lora and/or full. Empty: the preset's values.")
    learning_rates: tuple[LearningRate, ...] | None = Field(
        default=None, title="Learning rates", description="Empty: the preset's values.")
    ranks: tuple[Rank, ...] | None = Field(
        default=None, title="LoRA ranks",
        description="Powers of two. Empty: the preset's values.")
    seeds: tuple[Seed, ...] | None = Field(
        default=None, title="Seeds", description="Random seeds. Empty: the preset's values.")
    nodes: tuple[NodeCount, ...] | None = Field(
        default=None, title="Nodes", description="Engineering axis: nodes per run.")
    gpus_per_node: tuple[GpuCount, ...] | None = Field(
        default=None, title="GPUs per node",
        description="Engineering axis: GPUs per node (one process each).")
    zero_stages: tuple[ZeroStage, ...] | None = Field(
        default=None, title="ZeRO stages",
        description="Engineering axis: DeepSpeed ZeRO stages (0, 2, 3).")
    per_device_batches: tuple[Batch, ...] | None = Field(
        default=None, title="Per-device batches",
        description="Engineering axis: per-device batch sizes.")
    global_batch: Annotated[int, Field(strict=True, gt=0, le=1_000_000)] | None = Field(
        default=None, title="Global batch",
        description="Samples per optimizer step kept across layouts "
                    "(default: per-device batch x accumulation).")
    batch_scaling: Literal["fixed_global", "per_device"] | None = Field(
        default=None, title="Batch scaling",
        description="fixed_global (default): accumulation derived per layout; "
                    "per_device: the global batch grows.")
    max_steps: Annotated[int, Field(strict=True, gt=0, le=10_000_000)] | None = Field(
        default=None, title="Max steps", description="Optimizer steps per run (overrides epochs).")
    epochs: Annotated[float, Field(strict=True, gt=0, le=100)] | None = Field(
        default=None, title="Epochs")
    data_source: SafePath | None = Field(
        default=None, title="Data source",
        description="synthetic, hub:<dataset id>, or a JSONL/Parquet path.")
    experiment: SafeName | None = Field(default=None, title="MLflow experiment")
    sweep_id: SafeName | None = Field(
        default=None, title="Sweep id",
        description="Default: the preset name (+ a hash of the overrides).")
    cluster: SafeName = Field(
        default_factory=_cluster_default, title="Cluster profile",
        json_schema_extra=_choices(_clusters),
        description="configs/clusters/<name>.yaml; local runs jobs here.")
    force: StrictBool = Field(
        default=False, title="Force re-run",
        description="Train runs even if an identical run already finished.")
    submit_predicted_oom: StrictBool = Field(
        default=False, title="Submit predicted OOM",
        description="Also submit layouts the memory plan predicts will not fit in GPU "
                    "memory (default: they are listed in the plan and held back).")
    evaluate: StrictBool = Field(default=True, title="Evaluate on LEXam")
    eval_max_questions: Annotated[int, Field(strict=True, gt=0, le=1_000_000)] | None = Field(
        default=None, title="LEXam questions",
        description="Evaluate on at most N questions (default all).")
    eval_max_new_tokens: Annotated[int, Field(strict=True, gt=0, le=32768)] | None = Field(
        default=None, title="LEXam answer budget",
        description="Tokens generated per answer (default: the official long budget; "
                    "small on CPU).")
    eval_data: SafePath | None = Field(
        default=None, title="LEXam data",
        description="Local LEXam JSONL, 'synthetic' or hub:REPO (default: the evaluator's).")
    eval_backend: EvalBackend = Field(
        default="transformers", title="Evaluation backend",
        description="transformers (in process) or vllm (one server per base model, its "
                    "adapters loaded in turn).")
    eval_scorer: Scorer = Field(
        default="project", title="LEXam scorer",
        description="project, or lighteval (its own runner against the vLLM server; needs "
                    "the vllm backend). Format rate and log-likelihood accuracy always come "
                    "from the project's scorer.")
    heldout_fraction: Annotated[float, Field(strict=True, ge=0.0, lt=1.0)] | None = Field(
        default=None, title="Held-out SJP share",
        description="Share of the SJP cases held out for scoring (stratified, seeded); "
                    "0: none. Empty: the preset's (hub data: its validation split).")
    checkpoint_every: Annotated[int, Field(strict=True, ge=0, le=1_000_000)] | None = Field(
        default=None, title="Evaluate checkpoints",
        description="Every Nth checkpoint save is evaluated (LEXam, held-out SJP): "
                    "forgetting curves; 0: none. Empty: the preset's.")
    full_checkpoints: StrictBool = Field(
        default=False, title="Full FT checkpoints too",
        description="Also keep and evaluate full fine-tune checkpoints (each a whole model).")
    sjp_eval_cases: Annotated[int, Field(strict=True, gt=0, le=1_000_000)] | None = Field(
        default=None, title="Held-out SJP cases",
        description="Score at most N held-out cases per model (default all).")

    @field_validator(*AXES, *INFRA_AXES, mode="before")
    @classmethod
    def _empty_means_preset(cls, value: Any) -> Any:
        """The form sends [] or "" for an untouched list: keep the preset's axis."""
        return None if value in ([], (), "", None) else value

    @field_validator("max_steps", "epochs", "data_source", "experiment", "sweep_id",
                     "eval_max_questions", "eval_max_new_tokens", "eval_data", "global_batch",
                     "batch_scaling", "heldout_fraction", "checkpoint_every", "sjp_eval_cases",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator(*AXES, *INFRA_AXES)
    @classmethod
    def _canonical_order(cls, value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        """Sorted, without repeats: the same values in another order are the same sweep."""
        return None if value is None else tuple(sorted(set(value)))

    @field_validator("ranks")
    @classmethod
    def _powers_of_two(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        for rank in value or ():
            if rank & (rank - 1):
                raise ValueError(f"{rank} is not a power of two (1, 2, 4, ... {MAX_RANK})")
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            known_model(name)
        return value

    @model_validator(mode="after")
    def _scorer_needs_its_backend(self) -> SweepConf:
        if self.eval_scorer == "lighteval" and self.eval_backend != "vllm":
            raise ValueError("eval_scorer: lighteval evaluates through the vLLM server; set "
                             "eval_backend to vllm")
        return self

    def overrides(self) -> dict[str, Any]:
        """The fields that change the preset's runs (for the derived sweep id)."""
        keys = (*AXES, *INFRA_AXES, "max_steps", "epochs", "data_source", "experiment",
                "global_batch", "batch_scaling", "heldout_fraction")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def derived_sweep_id(self) -> str:
        """The preset's name, plus a short hash of the overrides if there are any:
        the same conf always gives the same sweep id."""
        if self.sweep_id:
            return self.sweep_id
        overrides = self.overrides()
        if not overrides:
            return self.sweep
        digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()
        return f"{self.sweep}-{digest[:8]}"

    def sweep_spec(self) -> SweepSpec:
        """The preset with this conf's overrides applied (axes replaced in every block)."""
        base = load_named_sweep(self.sweep)
        axis_overrides = {k: getattr(self, k) for k in (*AXES, *INFRA_AXES)
                          if getattr(self, k) is not None}
        run = dict(base.run)
        if self.max_steps is not None:
            run["max_steps"] = self.max_steps
        if self.epochs is not None:
            run["epochs"] = self.epochs
            if self.max_steps is None:
                run.pop("max_steps", None)  # epochs asked for: the preset's steps yield
        if self.data_source is not None:
            data = {**run.get("data", {}), "source": self.data_source}
            if not self.data_source.startswith("hub:"):
                data.pop("hub_config", None)
                if data.pop("heldout_split", None) and "heldout_fraction" not in data:
                    data["heldout_fraction"] = DEFAULT_HELDOUT_FRACTION  # files: no splits
            run["data"] = data
        if self.heldout_fraction is not None:
            data = {k: v for k, v in run.get("data", {}).items()
                    if k not in ("heldout_split", "heldout_fraction")}
            if self.heldout_fraction > 0:
                data["heldout_fraction"] = self.heldout_fraction
            run["data"] = data
        if self.checkpoint_every is not None:
            run["checkpoint_eval_every"] = self.checkpoint_every
        if self.experiment is not None:
            run["experiment"] = self.experiment
        try:
            grids = tuple(
                GridBlock.model_validate({**block.model_dump(), **axis_overrides})
                for block in base.grids
            )
            batch = {k: getattr(self, k) for k in ("global_batch", "batch_scaling")
                     if getattr(self, k) is not None}
            return SweepSpec.model_validate({**base.model_dump(), "grids": grids, "run": run,
                                             **batch})
        except ValidationError as error:
            raise SpecError(describe_errors(error)) from None


def parse_conf(raw: Any) -> SweepConf:
    """Validate the trigger conf; SpecError names each bad field."""
    return parse(SweepConf, raw, "sweep conf")


def plan_runs(
    conf: SweepConf,
    per_model: Mapping[str, Mapping[str, Any]] | None = None,
    **run_overrides: Any,
) -> list[RunSpec]:
    """Every run spec of the conf's sweep (validated; no duplicates).

    ``run_overrides`` are settings the caller adds to every run (e.g. where checkpoints
    go on the chosen cluster); ``per_model`` adds settings by model preset (e.g. the
    cluster's DeepSpeed stage for a model size) to the runs that did not set them
    themselves: an engineering sweep's ZeRO stage axis wins over the profile's default.
    """
    sweep = conf.sweep_spec()
    specs = sweep.expand(sweep_id=conf.derived_sweep_id(), **run_overrides)
    if not conf.full_checkpoints:  # a full fine-tune's checkpoint is a whole model
        specs = [s.model_copy(update={"checkpoint_eval_every": 0}) if s.method == "full"
                 else s for s in specs]
    if not per_model:
        return specs
    out: dict[str, RunSpec] = {}
    for spec in specs:
        settings = {k: v for k, v in (per_model.get(spec.model) or {}).items()
                    if k not in spec.model_fields_set}
        if settings:
            try:
                spec = RunSpec.model_validate({**spec.model_dump(), **settings})
            except ValidationError as error:
                raise SpecError.from_validation(
                    error, f"cluster settings for {spec.model} are invalid:\n") from None
        out.setdefault(spec.spec_hash, spec)
    return list(out.values())


# -- the other DAGs' confs ----------------------------------------------------------------

LEXAM_DATA_ENV = "LORA_REGRET_LEXAM_DATA"


def _default_lexam_data() -> str:
    return os.environ.get(LEXAM_DATA_ENV) or f"hub:{LEXAM_HUB_REPO}"


class NightlyConf(EvalOptions):
    """``lexam_nightly``: which evaluation set, where the evaluation jobs run, and whether
    versions already evaluated on exactly this set are evaluated again."""

    data: SafePath = Field(default_factory=_default_lexam_data, title="LEXam data",
                           description="Local LEXam JSONL or folder, 'synthetic', or hub:REPO.")
    force: StrictBool = Field(default=False, title="Force",
                              description="Re-evaluate versions already evaluated on this set.")
    cluster: SafeName = Field(default_factory=_cluster_default, title="Cluster profile",
                              json_schema_extra=_choices(_clusters),
                              description="Where the evaluation jobs run.")
    backend: EvalBackend = Field(default="transformers", title="Backend",
                                 description="transformers (in process) or vllm (one server "
                                             "per base model with all its adapters).")
    dtype: Dtype = Field(default="auto", title="Dtype",
                         description="auto: bfloat16 where the hardware has it, else float32.")

    @field_validator("languages", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()] or None
        return value

    def options(self) -> EvalOptions:
        return EvalOptions.model_validate(
            self.model_dump(include=set(EvalOptions.model_fields)))


class ReportConf(BaseModel):
    """``lora_regret_report`` run by hand: which sweep (empty: the triggering sweeps, or
    every sweep)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep_id: SafeName | None = Field(
        default=None, title="Sweep id",
        description="Sweep to report on (MLflow tag sweep_id). Empty: the triggering sweep, "
                    "or every sweep when run by hand.")

    @field_validator("sweep_id", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


def parse_nightly_conf(raw: Any) -> NightlyConf:
    return parse(NightlyConf, raw, "lexam_nightly conf")


def parse_report_conf(raw: Any) -> ReportConf:
    return parse(ReportConf, raw, "lora_regret_report conf")
