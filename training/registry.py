"""The MLflow model registry side of a run: adapters in, adapters out.

- LoRA: the adapter alone is logged as an MLflow transformers model (PEFT weights plus
  the tokenizer, with ``base_model_path`` so the base weights are not copied) and
  registered as a version of ``lora-regret-{model}-lora``.
- Full fine-tuning: a version of ``lora-regret-{model}-full`` whose source is the
  checkpoint folder; tens of GB stay where training wrote them.

Every version carries the spec's identity in its tags, so a version leads back to its run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from contracts.spec import RunSpec

# Requirements written into the logged model. The default list would import torchvision.
ADAPTER_PIP_REQUIREMENTS = ["torch", "transformers", "peft", "safetensors"]
CHECKPOINT_ARTIFACT = "checkpoint_reference"


def registered_model_name(model: str, method: str) -> str:
    return f"lora-regret-{model}-{method}"


def version_tags(spec: RunSpec, run_id: str) -> dict[str, str]:
    return {
        "spec_hash": spec.spec_hash,
        "run_id": run_id,
        "model": spec.model,
        "method": spec.method,
        "lr": f"{spec.lr:g}",
        "rank": "" if spec.rank is None else str(spec.rank),
        "seed": str(spec.seed),
        "sweep_id": spec.sweep_id,
    }


def _ensure_registered_model(client: MlflowClient, name: str, spec: RunSpec) -> None:
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        # Another job may create it between the two calls; either way it exists after.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.create_registered_model(
                name, tags={"model": spec.model, "method": spec.method},
                description=f"{spec.method} fine-tunes of {spec.model} (lora-regret)",
            )


def register_adapter(spec: RunSpec, run_id: str, peft_model: Any, tokenizer: Any,
                     base_model_path: str) -> tuple[str, str]:
    """Log the adapter (only) to the run and register it; returns (model_uri, version)."""
    name = registered_model_name(spec.model, "lora")
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.transformers.log_model(
            transformers_model={"model": peft_model, "tokenizer": tokenizer},
            name="adapter",
            task="text-generation",
            pip_requirements=ADAPTER_PIP_REQUIREMENTS,
            base_model_path=base_model_path,
        )
    client = MlflowClient()
    _ensure_registered_model(client, name, spec)
    # register_model links the version to the logged model (a tracking server refuses a
    # bare create_model_version with a models:/ source).
    version = mlflow.register_model(info.model_uri, name, tags=version_tags(spec, run_id))
    client.update_model_version(name, version.version,
                                description=f"{spec.run_name} (spec {spec.spec_hash})")
    return f"models:/{name}/{version.version}", version.version


def register_checkpoint(spec: RunSpec, run_id: str, checkpoint_dir: Path) -> tuple[str, str]:
    """Register a full fine-tune by reference to its checkpoint folder (nothing copied).

    The version's source is a small JSON artifact of the run naming the folder (tracking
    servers accept only sources inside the run's artifacts); the tag checkpoint_path is the
    folder itself.
    """
    name = registered_model_name(spec.model, "full")
    client = MlflowClient()
    _ensure_registered_model(client, name, spec)
    path = str(checkpoint_dir.resolve())
    client.log_dict(run_id, {"checkpoint_path": path, "spec_hash": spec.spec_hash},
                    f"{CHECKPOINT_ARTIFACT}/reference.json")
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}", run_id=run_id,
        tags={**version_tags(spec, run_id), "checkpoint_path": path},
        description=f"{spec.run_name} (spec {spec.spec_hash}); weights stay at {path}",
    )
    return f"models:/{name}/{version.version}", version.version


def _referenced_folder(model_uri: str) -> Path | None:
    """The folder a version registered by reference names (tag ``checkpoint_path``): full
    fine-tunes, and checkpoints the report recommended; None for other versions."""
    target = model_uri.removeprefix("models:/")
    client = MlflowClient()
    try:
        if "@" in target:
            name, alias = target.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = target.split("/", 1)
            version = client.get_model_version(name, number)
    except (ValueError, mlflow.exceptions.MlflowException):
        return None
    path = version.tags.get("checkpoint_path")
    return Path(path) if path else None


def fetch_adapter(model_uri: str, dst: str | Path) -> Path:
    """Download a registered adapter; returns a folder ``PeftModel.from_pretrained`` loads.
    A version registered by reference (a recommended checkpoint) is its folder itself."""
    referenced = _referenced_folder(model_uri) if model_uri.startswith("models:/") else None
    if referenced is not None:
        if not (referenced / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{model_uri}: {referenced} holds no PEFT adapter "
                                    "(not reachable from here, or not an adapter)")
        return referenced
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    configs = sorted(local.rglob("adapter_config.json"))
    if not configs:
        raise FileNotFoundError(f"{model_uri} holds no PEFT adapter (no adapter_config.json)")
    return configs[0].parent


def fetch_checkpoint(model_uri: str) -> Path:
    """The checkpoint folder a full fine-tune version points to."""
    client = MlflowClient()
    _, name, version = model_uri.split("/", 2)
    model_version = client.get_model_version(name, version)
    path = model_version.tags.get("checkpoint_path")
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"{model_uri}: checkpoint {path!r} is not reachable from here")
    return Path(path)

