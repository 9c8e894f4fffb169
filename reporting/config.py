"""Validated settings of one report generation."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Same character set as training.spec.SafeName: sweep ids reach file names and MLflow filters.
SWEEP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_EXPERIMENT = "lora-regret"
REPO_ROOT = Path(__file__).resolve().parent.parent


class NothingToReport(LookupError):
    """The named experiment or sweep has no runs to report on (exit code 3)."""


def check_sweep_id(value: str) -> str:
    if not SWEEP_ID_RE.fullmatch(value):
        raise ValueError(
            f"sweep_id: {value!r} must start with a letter or digit and contain only "
            "letters, digits, _ . - (at most 128 characters)"
        )
    return value


SweepId = Annotated[str, AfterValidator(check_sweep_id)]


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the project's default store (docs/CONVENTIONS.md)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT}/.state/mlflow.db"


def default_output_dir() -> Path:
    return Path(os.environ.get("LORA_REGRET_REPORTS_DIR") or REPO_ROOT / "reports")


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

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.output_dir / "cache"
