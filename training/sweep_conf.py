"""The sweep DAG's trigger conf, validated, and turned into the run specs to train.

The conf comes from the Airflow trigger form (untrusted). It names a sweep preset
(configs/sweeps/<name>.yaml) and may override grid axes and shared settings; every value
is validated here, and every resulting run spec again by RunSpec, before anything is
submitted. Errors name the conf field (``learning_rates.1: ...``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.presets import load_presets
from training.spec import MAX_RANK, RunSpec, SafeName, SafePath, SpecError, describe_errors
from training.sweep import GridBlock, SweepSpec, load_named_sweep

AXES = ("models", "methods", "learning_rates", "ranks", "seeds")
INFRA_AXES = ("nodes", "gpus_per_node", "zero_stages", "per_device_batches")
LearningRate = Annotated[float, Field(gt=0, le=1.0)]
Rank = Annotated[int, Field(gt=0, le=MAX_RANK)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
NodeCount = Annotated[int, Field(ge=1, le=4096)]
GpuCount = Annotated[int, Field(ge=0, le=64)]
Batch = Annotated[int, Field(gt=0, le=4096)]


class SweepConf(BaseModel):
    """What a user may set when triggering ``lora_regret_sweep``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: SafeName = Field(default="reference", description="Sweep preset (configs/sweeps).")
    models: tuple[str, ...] | None = None
    methods: tuple[Literal["lora", "full"], ...] | None = None
    learning_rates: tuple[LearningRate, ...] | None = None
    ranks: tuple[Rank, ...] | None = None
    seeds: tuple[Seed, ...] | None = None
    nodes: tuple[NodeCount, ...] | None = None
    gpus_per_node: tuple[GpuCount, ...] | None = None
    zero_stages: tuple[Literal[0, 2, 3], ...] | None = None
    per_device_batches: tuple[Batch, ...] | None = None
    global_batch: int | None = Field(default=None, gt=0, le=1_000_000)
    batch_scaling: Literal["fixed_global", "per_device"] | None = None
    max_steps: int | None = Field(default=None, gt=0, le=10_000_000)
    epochs: float | None = Field(default=None, gt=0, le=100)
    data_source: SafePath | None = None
    experiment: SafeName | None = None
    sweep_id: SafeName | None = None
    cluster: SafeName = "local"
    force: bool = False
    evaluate: bool = True
    eval_max_questions: int | None = Field(default=None, gt=0, le=1_000_000)
    eval_max_new_tokens: int | None = Field(
        default=None, gt=0, le=32768,
        description="Generation budget per LEXam answer (default: the official budget).")
    eval_data: SafePath | None = Field(
        default=None, description="LEXam source for evaluation (default: the evaluator's).")

    @field_validator(*AXES, *INFRA_AXES, mode="before")
    @classmethod
    def _empty_means_preset(cls, value: Any) -> Any:
        """The form sends [] or "" for an untouched list: keep the preset's axis."""
        return None if value in ([], (), "", None) else value

    @field_validator("max_steps", "epochs", "data_source", "experiment", "sweep_id",
                     "eval_max_questions", "eval_max_new_tokens", "eval_data", "global_batch",
                     "batch_scaling", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

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
        known = load_presets()
        for name in value or ():
            if name not in known:
                raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(known))}")
        return value

    def overrides(self) -> dict[str, Any]:
        """The fields that change the preset's runs (for the derived sweep id)."""
        keys = (*AXES, *INFRA_AXES, "max_steps", "epochs", "data_source", "experiment",
                "global_batch", "batch_scaling")
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
            run["data"] = data
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


def parse_conf(raw: dict[str, Any]) -> SweepConf:
    """Validate the trigger conf; SpecError names each bad field."""
    try:
        return SweepConf.model_validate(raw)
    except ValidationError as error:
        raise SpecError.from_validation(error, "invalid sweep conf:\n") from None


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
