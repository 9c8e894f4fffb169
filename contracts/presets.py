"""Model presets from configs/models.yaml: the only model names a spec accepts."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from contracts.paths import configs_dir


class ModelPreset(BaseModel):
    """One entry of configs/models.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: Literal["hub", "local", "random"]
    family: str
    hub_id: str | None = None
    total_params: int | None = None
    lora_params_per_rank: int | None = None
    architecture: dict[str, int] | None = None
    pypi_package: str | None = None
    gguf_file: str | None = None

    def lora_fraction(self, rank: int) -> float | None:
        """Trainable share of a rank-``rank`` LoRA model, measured against the base
        model's size as the training job logs it (rank 64 on Apertus 8B: 1.98%)."""
        if not self.total_params or not self.lora_params_per_rank:
            return None
        return rank * self.lora_params_per_rank / self.total_params


def load_presets() -> dict[str, ModelPreset]:
    return _load(configs_dir() / "models.yaml")


@cache
def _load(path: Path) -> dict[str, ModelPreset]:
    raw = yaml.safe_load(path.read_text())
    return {name: ModelPreset(name=name, **entry) for name, entry in raw.items()}


def known_model(name: str) -> str:
    """The name itself if it is a preset; a ValueError naming the known ones otherwise
    (for validators, so the field's error lists what would have worked)."""
    presets = load_presets()
    if name not in presets:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(presets))}")
    return name


def get_preset(name: str) -> ModelPreset:
    presets = load_presets()
    if name not in presets:
        raise KeyError(f"unknown model {name!r}; known presets: {', '.join(sorted(presets))}")
    return presets[name]
