"""Parameter counts of the model presets, read from configs/models.yaml.

Read with yaml directly rather than through contracts.presets so that reporting stays
light: the Airflow worker that runs the report never needs the training package.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

MODELS_YAML = Path(__file__).resolve().parent.parent / "configs" / "models.yaml"


class ParamCounts(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    total_params: int | None = None
    lora_params_per_rank: int | None = None

    def lora_fraction(self, rank: int) -> float | None:
        """Trainable share of a rank-``rank`` LoRA model, measured against the base
        model's size as the training job logs it (rank 64 on Apertus 8B: 1.98%)."""
        if not self.total_params or not self.lora_params_per_rank:
            return None
        return rank * self.lora_params_per_rank / self.total_params


@cache
def param_counts(path: Path = MODELS_YAML) -> dict[str, ParamCounts]:
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text()) or {}
    return {name: ParamCounts.model_validate(entry) for name, entry in raw.items()}
