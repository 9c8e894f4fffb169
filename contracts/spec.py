"""The run spec: one validated object describing one training run.

Its content hash (over the fields that change what is trained) is the run's identity:
the sweep DAG skips a spec whose hash already has a finished MLflow run. Every string
field is a safe-string type (``contracts.safe``): specs travel from an untrusted trigger
form into job scripts and remote shells.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from contracts.errors import SpecError, parse
from contracts.files import SpecFile
from contracts.names import DEFAULT_EXPERIMENT
from contracts.presets import known_model
from contracts.safe import MODULE_NAME_PATTERN, SafeName, SafePath

MAX_RANK = 4096
# Held-out share of a local data source when a sweep moves from a hub data set (which has
# its own validation split) to files.
DEFAULT_HELDOUT_FRACTION = 0.1


class DataSpec(BaseModel):
    """Where the SJP training cases come from, and which of them are held out.

    source: ``synthetic`` (generated, seeded), ``hub:<dataset id>`` (through ``datasets``)
    or a local JSONL/Parquet file or folder in the SJP schema.

    Held-out cases (scored after training, never trained on): for the hub, the data set's
    own ``heldout_split`` (``validation`` or ``test``); for local files and synthetic
    cases, a ``heldout_fraction`` drawn per label (stratified) with ``split_seed``, which
    is not the run's seed, so every seed of a sweep is scored on the same cases.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    source: SafePath = "synthetic"
    hub_config: SafeName | None = None
    split: SafeName = "train"
    languages: tuple[Literal["de", "fr", "it"], ...] | None = None
    max_samples: int | None = Field(default=None, strict=True, gt=0, le=100_000_000)
    synthetic_size: int = Field(default=512, strict=True, gt=0, le=1_000_000)
    heldout_fraction: float | None = Field(
        default=None, strict=True, gt=0.0, lt=1.0,
        description="Local/synthetic: share of the cases held out (stratified by label).")
    heldout_split: SafeName | None = Field(
        default=None, description="Hub: the data set's split held out (validation, test).")
    split_seed: int = Field(default=0, strict=True, ge=0, le=2**31 - 1)

    # Added later: left out of the run's identity while unset (see RunSpec.identity).
    OPTIONAL_IDENTITY_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"heldout_fraction", "heldout_split"})

    @model_validator(mode="after")
    def _one_way_to_hold_out(self) -> DataSpec:
        if self.heldout_split is not None and self.kind != "hub":
            raise ValueError("heldout_split: only hub data sets have splits of their own; "
                             "use heldout_fraction for local files and synthetic cases")
        if self.heldout_split is not None and self.heldout_fraction is not None:
            raise ValueError("heldout_fraction: set heldout_split or heldout_fraction, not both")
        if self.heldout_split is not None and self.heldout_split == self.split:
            raise ValueError(f"heldout_split: {self.heldout_split!r} is the training split")
        return self

    @property
    def kind(self) -> Literal["synthetic", "hub", "local"]:
        if self.source == "synthetic":
            return "synthetic"
        if self.source.startswith("hub:"):
            return "hub"
        return "local"

    @property
    def holds_out(self) -> bool:
        """Whether some cases are kept out of training for held-out scoring."""
        return self.heldout_fraction is not None or self.heldout_split is not None

    def identity(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if not self.holds_out:  # today's specs keep their hashes
            data.pop("split_seed")
        for name in self.OPTIONAL_IDENTITY_FIELDS:
            if data.get(name) is None:
                data.pop(name)
        return data


class RunSpec(SpecFile):
    """One training run. Defaults follow the reference study (alpha 32, all linear
    layers, dropout 0, constant LR, batch 4 x 4 accumulation, 1 epoch)."""

    # Numbers are taken as given (no bool/str coercion) and must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    WHAT: ClassVar[str] = "run spec"

    model: str
    model_path: SafePath | None = Field(
        default=None, description="Local folder with the model's weights (overrides the hub)."
    )
    method: Literal["lora", "full"]
    lr: float = Field(strict=True, gt=0, le=1.0)
    rank: int | None = Field(default=None, strict=True, gt=0, le=MAX_RANK)
    alpha: float = Field(default=32.0, strict=True, gt=0, le=1_000_000)
    target_modules: Literal["all-linear"] | tuple[str, ...] = "all-linear"
    dropout: float = Field(default=0.0, strict=True, ge=0.0, lt=1.0)
    seed: int = Field(default=0, strict=True, ge=0, le=2**31 - 1)
    epochs: float = Field(default=1.0, strict=True, gt=0, le=100)
    max_steps: int | None = Field(default=None, strict=True, gt=0, le=100_000_000,
                                  description="Overrides epochs.")
    per_device_batch: int = Field(default=4, strict=True, gt=0, le=4096)
    grad_accum: int = Field(default=4, strict=True, gt=0, le=4096)
    max_seq_length: int = Field(default=1024, strict=True, ge=32, le=131072)
    lr_schedule: Literal[
        "constant", "constant_with_warmup", "linear", "cosine"
    ] = "constant"
    warmup_ratio: float = Field(default=0.0, strict=True, ge=0.0, lt=1.0)
    data: DataSpec = DataSpec()
    zero_stage: Literal[0, 2, 3] | None = Field(
        default=None, description="DeepSpeed ZeRO stage; None trains without DeepSpeed."
    )
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto", description="auto: where the hardware computes in bf16 natively.")
    gradient_checkpointing: StrictBool = False
    # Infrastructure (engineering sweeps): part of the identity when set, because two runs
    # differing only in nodes are different measurements; None leaves the choice to the
    # cluster profile and keeps the hash of runs that never named them unchanged.
    nodes: int | None = Field(default=None, strict=True, ge=1, le=4096,
                              description="Nodes of the job.")
    gpus_per_node: int | None = Field(
        default=None, strict=True, ge=0, le=64,
        description="Accelerators per node, one training process each (0: one CPU process).")
    # Bookkeeping: not part of the identity hash.
    gpu_memory_gb: float | None = Field(
        default=None, gt=0, le=100_000,
        description="Memory of one GPU where the run is planned (the cluster profile's "
                    "resources.gpu_memory_gb); what its memory plan is checked against.")
    output_dir: SafePath = "runs"
    sweep_id: SafeName = "adhoc"
    experiment: SafeName = DEFAULT_EXPERIMENT
    save_steps: int = Field(default=50, strict=True, gt=0, le=100_000_000)
    logging_steps: int = Field(default=1, strict=True, gt=0, le=100_000_000)
    final_loss_window: int = Field(default=10, strict=True, gt=0, le=100_000,
                                   description="Last N steps averaged.")
    checkpoint_eval_every: int = Field(
        default=0, strict=True, ge=0, le=1_000_000,
        description="Keep every Nth checkpoint save (weights only) for evaluation; 0: none.")
    eval_max_cases: int = Field(
        default=256, strict=True, gt=0, le=1_000_000,
        description="Held-out cases for the validation loss logged at each checkpoint.")

    # Fields that do not change what is trained.
    NON_IDENTITY_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"model_path", "output_dir", "sweep_id", "experiment", "save_steps",
         "logging_steps", "final_loss_window", "gpu_memory_gb", "checkpoint_eval_every",
         "eval_max_cases"}
    )
    # Identity fields added later: left out of the hash while unset (stable old hashes).
    OPTIONAL_IDENTITY_FIELDS: ClassVar[frozenset[str]] = frozenset({"nodes", "gpus_per_node"})

    @field_validator("bf16", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML reads a bare ``off``/``on`` as a boolean: take it as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return known_model(value)

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, tuple):
            if not value:
                raise ValueError("must name at least one module or be 'all-linear'")
            for name in value:
                if not re.fullmatch(MODULE_NAME_PATTERN, name):
                    raise ValueError(f"{name!r} is not a module name")
        return value

    @model_validator(mode="after")
    def _rank_matches_method(self) -> RunSpec:
        if self.method == "full" and self.rank is not None:
            raise ValueError("rank: must be empty for method 'full' (full fine-tuning has no rank)")
        if self.method == "lora":
            if self.rank is None:
                raise ValueError("rank: required for method 'lora'")
            if self.rank & (self.rank - 1):
                raise ValueError(f"rank: {self.rank} is not a power of two (1, 2, 4, ... 4096)")
        return self

    # -- identity -----------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The fields that define what is trained, in canonical JSON-able form."""
        data = self.model_dump(mode="json", exclude=set(self.NON_IDENTITY_FIELDS))
        for name in self.OPTIONAL_IDENTITY_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        data["data"] = self.data.identity()
        return data

    @property
    def spec_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        rank = f"-r{self.rank}" if self.rank else ""
        return f"{self.model}-{self.method}{rank}-lr{self.lr:g}-s{self.seed}{self.layout_suffix}"

    @property
    def layout_suffix(self) -> str:
        """``-n2x4-z3`` for runs that name their infrastructure, else empty."""
        if self.nodes is None and self.gpus_per_node is None:
            return ""
        gpus = "" if self.gpus_per_node is None else f"x{self.gpus_per_node}"
        zero = "" if self.zero_stage is None else f"-z{self.zero_stage}"
        return f"-n{self.nodes or 1}{gpus}{zero}"

    @property
    def world_size(self) -> int | None:
        """Training processes the spec asks for (None: the cluster profile decides)."""
        if self.nodes is None and self.gpus_per_node is None:
            return None
        return (self.nodes or 1) * max(self.gpus_per_node or 1, 1)

    @property
    def global_batch(self) -> int | None:
        """Samples per optimizer step, when the world size is known."""
        world = self.world_size
        return None if world is None else self.per_device_batch * self.grad_accum * world

    @property
    def run_dir(self) -> Path:
        """Where this run's checkpoints live: stable per identity, so retries resume."""
        return Path(self.output_dir) / f"{self.run_name}-{self.spec_hash}"

    @property
    def global_batch_per_device_group(self) -> int:
        return self.per_device_batch * self.grad_accum

    def tags(self) -> dict[str, str]:
        """MLflow tags that identify the run (see docs/CONVENTIONS.md)."""
        return {
            "sweep_id": self.sweep_id,
            "spec_hash": self.spec_hash,
            "model": self.model,
            "method": self.method,
            "lr": f"{self.lr:g}",
            "rank": str(self.rank) if self.rank is not None else "",
            "seed": str(self.seed),
            "zero_stage": "" if self.zero_stage is None else str(self.zero_stage),
            "nodes": "" if self.nodes is None else str(self.nodes),
            "gpus_per_node": "" if self.gpus_per_node is None else str(self.gpus_per_node),
        }


def parse_spec(raw: Any) -> RunSpec:
    """Validate a raw mapping into a RunSpec, raising SpecError naming the bad fields."""
    return parse(RunSpec, raw, "run spec")


__all__ = ["DEFAULT_HELDOUT_FRACTION", "MAX_RANK", "DataSpec", "RunSpec", "SpecError", "parse_spec"]
