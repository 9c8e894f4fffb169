"""Validated settings of one report generation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.names import DEFAULT_EXPERIMENT
from contracts.paths import default_tracking_uri, project_root
from contracts.safe import SafeName as SweepId
from contracts.safe import check_name

__all__ = ["DEFAULT_EXPERIMENT", "NothingToReport", "ReportConfig", "SweepId", "check_sweep_id"]


class NothingToReport(LookupError):
    """The named experiment or sweep has no runs to report on (exit code 3)."""


def check_sweep_id(value: str) -> str:
    """A sweep id from outside (an asset event, a form): sweep ids reach file names and
    MLflow filters."""
    try:
        return check_name(value)
    except ValueError as error:
        raise ValueError(f"sweep_id: {value!r} {error}") from None


def default_output_dir() -> Path:
    return Path(os.environ.get("LORA_REGRET_REPORTS_DIR") or project_root() / "reports")


class ReportConfig(BaseModel):
    """What to report on and where to write it.

    ``sweep_ids`` empty means every sweep found in MLflow. ``final_loss_window`` is only
    used for runs that logged no ``train/final_loss`` (a run stopped before its summary):
    their final loss is the mean of their last N logged ``train/loss`` values, the same
    definition the training job uses.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str = Field(default_factory=default_tracking_uri, min_length=1)
    sweep_ids: tuple[SweepId, ...] = ()
    experiment: str | None = Field(
        default=None, description="Experiment name to search; None searches all experiments."
    )
    output_dir: Path = Field(default_factory=default_output_dir)
    cache_dir: Path | None = Field(
        default=None, description="History cache; default <output_dir>/cache."
    )
    final_loss_window: int = Field(default=10, gt=0, le=10_000)
    smoothing_window: int = Field(default=20, gt=0, le=10_000)
    log_to_mlflow: bool = True
    history_backend: str = Field(default="auto", pattern=r"^(auto|sql|rest|client)$")
    retention_margin: float = Field(
        default=0.02, ge=0.0, le=1.0,
        description="LEXam accuracy (fraction: 0.02 = 2 points) below the base model that a "
                    "recommended recipe may lose.")
    retention_metric: Literal["accuracy", "loglik_accuracy"] = Field(
        default="accuracy",
        description="LEXam metric retention is measured in: the official accuracy, or the "
                    "log-likelihood accuracy (for answer budgets too short for the format).")
    set_alias: bool = Field(
        default=True, description="Mark the recommended model's registry version with the "
                                  "alias 'recommended'.")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.output_dir / "cache"
