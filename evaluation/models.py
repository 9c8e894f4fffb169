"""Turning ``--model`` and ``--adapter`` into local folders the backends load.

``--model`` is a preset name (prepared through ``training.models``), a local folder or a
hub id; ``--adapter`` a local PEFT folder or a registry URI ``models:/NAME/VERSION``
(downloaded with ``training.registry.fetch_adapter``).
"""

from __future__ import annotations

from pathlib import Path

from contracts.presets import load_presets
from training.models import resolve_model_path


def is_preset(model: str) -> bool:
    return model in load_presets()


def resolve_base(model: str) -> str:
    """A folder or hub id ``from_pretrained`` accepts for a preset, path or hub id."""
    if is_preset(model):
        return resolve_model_path(model)
    return model


def resolve_adapter(adapter: str, workdir: str | Path) -> Path:
    """A local PEFT adapter folder for a path or a ``models:/`` registry URI."""
    if adapter.startswith("models:/"):
        from training.registry import fetch_adapter

        name = adapter.removeprefix("models:/").replace("/", "-")
        return fetch_adapter(adapter, Path(workdir) / name)
    path = Path(adapter)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter: {adapter} holds no adapter_config.json")
    return path


def adapter_rank(folder: str | Path) -> int:
    """The LoRA rank an adapter folder declares (vLLM needs the largest one served)."""
    import json

    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    return int(config.get("r", 8))


def resolve_dtype(dtype: str) -> str:
    """``auto``: bfloat16 where the hardware computes in it natively, else float32."""
    if dtype != "auto":
        return dtype
    from training.devices import native_bf16

    return "bfloat16" if native_bf16() else "float32"
