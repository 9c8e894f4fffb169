"""Sweep grids: a validated description of many runs, expanded into RunSpecs.

A sweep is a list of grid blocks (each a cartesian product of models x methods x LRs x
ranks x seeds) plus settings shared by every run. Blocks let one sweep say what a single
product cannot, such as the reference study's 70B LoRA runs covering fewer LRs and ranks.
Full fine-tuning has no rank: a block with both methods yields one full run per (model, LR,
seed), not one per rank.

Engineering sweeps add infrastructure axes to a block (nodes, GPUs per node, ZeRO stage,
per-device batch). By default they keep the global batch (per-device batch x accumulation
x world size) fixed, deriving the accumulation for each layout, so that throughput is
compared on the same optimisation problem; ``batch_scaling: per_device`` keeps the
per-device settings instead and lets the global batch grow with the world size.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.errors import SpecError, parse
from contracts.files import read_mapping
from contracts.paths import configs_dir
from contracts.safe import SafeName
from contracts.spec import RunSpec


class GridBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = Field(min_length=1)
    methods: tuple[Literal["lora", "full"], ...] = Field(min_length=1)
    learning_rates: tuple[float, ...] = Field(min_length=1)
    ranks: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0,)
    # Infrastructure axes (empty: the run settings' value, or the cluster profile's).
    nodes: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = ()
    gpus_per_node: tuple[Annotated[int, Field(ge=0, le=64)], ...] = ()
    zero_stages: tuple[Literal[0, 2, 3], ...] = ()
    per_device_batches: tuple[Annotated[int, Field(gt=0, le=4096)], ...] = ()

    @model_validator(mode="after")
    def _lora_needs_ranks(self) -> GridBlock:
        if "lora" in self.methods and not self.ranks:
            raise ValueError("ranks: at least one rank is needed when methods include 'lora'")
        return self

    def size(self) -> int:
        """How many runs the block expands into (before duplicates are dropped), counted
        without building them."""
        per_method = sum(len(self.ranks) if method == "lora" else 1 for method in self.methods)
        layouts = 1
        for axis in (self.nodes, self.gpus_per_node, self.zero_stages, self.per_device_batches):
            layouts *= max(len(axis), 1)
        return len(self.models) * len(self.learning_rates) * len(self.seeds) * per_method \
            * layouts

    def layouts(self) -> list[dict[str, Any]]:
        """Every combination of the block's infrastructure axes, as RunSpec settings."""
        axes = {"nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
                "zero_stage": self.zero_stages, "per_device_batch": self.per_device_batches}
        present = {k: v for k, v in axes.items() if v}
        return [dict(zip(present, combo, strict=True))
                for combo in itertools.product(*present.values())]


class SweepSpec(BaseModel):
    """A named sweep: grid blocks plus the run settings every run shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SafeName
    grids: tuple[GridBlock, ...] = Field(min_length=1)
    # Settings applied to every RunSpec (any RunSpec field except the grid axes).
    run: dict[str, Any] = Field(default_factory=dict)
    batch_scaling: Literal["fixed_global", "per_device"] = Field(
        default="fixed_global",
        description="fixed_global: derive grad_accum so every layout trains with the same "
        "global batch; per_device: keep per_device_batch and grad_accum as given.")
    global_batch: int | None = Field(
        default=None, gt=0, le=1_000_000,
        description="Samples per optimizer step to keep (default: per_device_batch x "
        "grad_accum of the run settings, i.e. the batch of one process).")

    @model_validator(mode="after")
    def _run_settings_are_not_axes(self) -> SweepSpec:
        axes = {"model", "method", "lr", "rank", "seed"}
        clash = axes & set(self.run)
        if clash:
            raise ValueError(f"run: {sorted(clash)} are grid axes; set them in grids")
        return self

    def size(self) -> int:
        """Runs in the grid (an upper bound: identical runs of two blocks count twice)."""
        return sum(block.size() for block in self.grids)

    def _batch(self, raw: dict[str, Any]) -> dict[str, Any]:
        """``raw`` with grad_accum derived from the global batch to keep (fixed_global)."""
        if self.batch_scaling != "fixed_global":
            return raw
        if raw.get("nodes") is None and raw.get("gpus_per_node") is None:
            return raw  # no layout named: nothing to keep fixed against
        defaults = RunSpec.model_fields
        per_device = int(raw.get("per_device_batch", defaults["per_device_batch"].default))
        accum = int(raw.get("grad_accum", defaults["grad_accum"].default))
        target = self.global_batch or per_device * accum
        world = int(raw.get("nodes") or 1) * max(int(raw.get("gpus_per_node") or 1), 1)
        per_step = per_device * world
        if target % per_step:
            raise SpecError(
                f"global_batch: {target} is not a multiple of per_device_batch x world size "
                f"= {per_device} x {world} (nodes={raw.get('nodes') or 1}, gpus_per_node="
                f"{raw.get('gpus_per_node')}); choose a global batch or per-device batch that "
                "divides evenly, or batch_scaling: per_device")
        return {**raw, "grad_accum": target // per_step}

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
                for rank, layout in itertools.product(ranks, block.layouts()):
                    raw = self._batch({**settings, **layout, "model": model, "method": method,
                                       "lr": lr, "rank": rank, "seed": seed})
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
        return parse_sweep(read_mapping(path, "sweep"))


def parse_sweep(raw: Any) -> SweepSpec:
    return parse(SweepSpec, raw, "sweep")


def sweep_presets() -> list[str]:
    """The preset names in configs/sweeps/."""
    return sorted(p.stem for p in (configs_dir() / "sweeps").glob("*.yaml"))


def load_named_sweep(name: str) -> SweepSpec:
    """A sweep from configs/sweeps/<name>.yaml."""
    path = configs_dir() / "sweeps" / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(f"sweep: unknown sweep {name!r}; known: {', '.join(sweep_presets())}")
    return SweepSpec.from_file(path)
