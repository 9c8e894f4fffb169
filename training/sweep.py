"""Sweep grids: a validated description of many runs, expanded into RunSpecs.

A sweep is a list of grid blocks (each a cartesian product of models x methods x LRs x
ranks x seeds) plus settings shared by every run. Blocks let one sweep say what a single
product cannot, such as the reference study's 70B LoRA runs covering fewer LRs and ranks.
Full fine-tuning has no rank: a block with both methods yields one full run per (model, LR,
seed), not one per rank.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.presets import CONFIGS_DIR
from training.spec import RunSpec, SafeName, SpecError


class GridBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = Field(min_length=1)
    methods: tuple[Literal["lora", "full"], ...] = Field(min_length=1)
    learning_rates: tuple[float, ...] = Field(min_length=1)
    ranks: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0,)

    @model_validator(mode="after")
    def _lora_needs_ranks(self) -> GridBlock:
        if "lora" in self.methods and not self.ranks:
            raise ValueError("ranks: at least one rank is needed when methods include 'lora'")
        return self


class SweepSpec(BaseModel):
    """A named sweep: grid blocks plus the run settings every run shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SafeName
    grids: tuple[GridBlock, ...] = Field(min_length=1)
    # Settings applied to every RunSpec (any RunSpec field except the grid axes).
    run: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _run_settings_are_not_axes(self) -> SweepSpec:
        axes = {"model", "method", "lr", "rank", "seed"}
        clash = axes & set(self.run)
        if clash:
            raise ValueError(f"run: {sorted(clash)} are grid axes; set them in grids")
        return self

    def expand(self, **overrides: Any) -> list[RunSpec]:
        """Every RunSpec of the sweep, in a stable order, without duplicates.

        Raises SpecError naming the first bad field (all specs are validated before any
        is returned, so a caller never submits part of a bad sweep).
        """
        settings = {**self.run, **overrides}
        settings.setdefault("sweep_id", self.name)
        specs: dict[str, RunSpec] = {}
        for block in self.grids:
            for model, method, lr, seed in itertools.product(
                block.models, block.methods, block.learning_rates, block.seeds
            ):
                ranks: tuple[int | None, ...] = block.ranks if method == "lora" else (None,)
                for rank in ranks:
                    raw = {**settings, "model": model, "method": method, "lr": lr,
                           "rank": rank, "seed": seed}
                    try:
                        spec = RunSpec.model_validate(raw)
                    except ValidationError as error:
                        raise SpecError.from_validation(
                            error, f"invalid run in sweep {self.name!r} ({model}, {method}, "
                            f"lr={lr:g}, rank={rank}, seed={seed}):\n") from None
                    specs.setdefault(spec.spec_hash, spec)
        return list(specs.values())

    @classmethod
    def from_file(cls, path: str | Path) -> SweepSpec:
        return parse_sweep(yaml.safe_load(Path(path).read_text()))


def parse_sweep(raw: dict[str, Any]) -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError.from_validation(error, "invalid sweep:\n") from None


def load_named_sweep(name: str) -> SweepSpec:
    """A sweep from configs/sweeps/<name>.yaml."""
    path = CONFIGS_DIR / "sweeps" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIGS_DIR / "sweeps").glob("*.yaml"))
        raise SpecError(f"sweep: unknown sweep {name!r}; known: {', '.join(known)}")
    return SweepSpec.from_file(path)
