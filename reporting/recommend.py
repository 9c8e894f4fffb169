"""The recommended recipe in the registry: the alias ``recommended`` on its model version.

A recommendation at a run's final step marks the version the training job registered. One
at an earlier checkpoint marks a version registered here by reference to the checkpoint's
folder (as full fine-tunes are registered: a small run artifact names the folder, the tag
``checkpoint_path`` holds it, nothing is copied); ``training.registry.fetch_adapter`` and
``fetch_checkpoint`` follow that tag. Per base model one version carries the alias: it is
removed from the other method's registered model, so "recommended" is never ambiguous.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from contracts.names import RECOMMENDED_ALIAS, registered_model_name
from reporting.findings import Candidate, Findings, RegistryAlias

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "checkpoint_reference/step-{step}"
IDENTITY_TAGS = ("sweep_id", "spec_hash", "model", "method", "lr", "rank", "seed")


def mark_recommended(client: MlflowClient, findings: Findings, runs: pd.DataFrame,
                     alias: str = RECOMMENDED_ALIAS) -> None:
    """Set the alias for every model's recommendation (its ``registry`` field says where;
    ``registry_note`` why not, when it could not be set)."""
    for m in findings.models:
        recommendation = m.heldout.recommendation if m.heldout else None
        if recommendation is None or recommendation.best is None:
            continue
        try:
            recommendation.registry = mark_candidate(
                client, m.model, recommendation.best, runs, alias, findings.sweep_id)
        except (MlflowException, LookupError, ValueError) as error:
            recommendation.registry_note = f"alias not set: {error}"
            log.warning("%s: recommended version not marked: %s", m.model, error)


def mark_candidate(client: MlflowClient, model: str, best: Candidate, runs: pd.DataFrame,
                   alias: str, sweep_id: str) -> RegistryAlias:
    """Put ``alias`` on the registry version of ``best`` (registered by reference first
    when it is a checkpoint)."""
    found = runs[runs["run_id"] == best.best_run_id]
    if found.empty:
        raise LookupError(f"run {best.best_run_id} is not in the sweep")
    row = found.iloc[0]
    if best.final:
        uri = str(row.get("registered_model_uri") or "")
        if not uri.startswith("models:/"):
            raise LookupError(f"run {row['run_name']} registered no model version")
        name, version = uri.removeprefix("models:/").split("/", 1)
        source = "final"
    else:
        name = registered_model_name(model, best.method)
        version = _reference_version(client, name, row, best.step)
        source = "checkpoint"
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "recommended_by_sweep", sweep_id)
    other = registered_model_name(model, "full" if best.method == "lora" else "lora")
    try:
        client.get_model_version_by_alias(other, alias)
        client.delete_registered_model_alias(other, alias)
    except MlflowException:
        pass  # no such model or no alias there
    log.info("%s: alias %r -> %s version %s (%s, step %d)", model, alias, name, version,
             source, best.step)
    return RegistryAlias(alias=alias, name=name, version=str(version),
                         model_uri=f"models:/{name}@{alias}", run_id=best.best_run_id,
                         step=best.step, source=source)


def _reference_version(client: MlflowClient, name: str, row: pd.Series, step: int) -> str:
    """The version of ``name`` that points at the run's checkpoint ``step``, registered
    now if it does not exist yet."""
    run_id = row["run_id"]
    folder = str(row.get("checkpoint_snapshots") or "")
    if not folder:
        raise LookupError(f"run {row['run_name']} kept no checkpoints (tag checkpoint_snapshots)")
    path = str(Path(folder) / f"step-{step}")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"model": str(row["model"]),
                                                   "method": str(row["method"])})
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("run_id") == run_id and version.tags.get("step") == str(step):
            return str(version.version)
    artifact = REFERENCE_ARTIFACT.format(step=step)
    client.log_dict(run_id, {"checkpoint_path": path, "step": step}, f"{artifact}/reference.json")
    run_tags = client.get_run(run_id).data.tags
    tags = {key: run_tags.get(key, "") for key in IDENTITY_TAGS}
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/{artifact}", run_id=run_id,
        tags={**tags, "run_id": run_id, "step": str(step), "checkpoint_path": path},
        description=f"{row['run_name']} at step {step} (checkpoint kept for evaluation); "
                    f"weights stay at {path}")
    return str(version.version)
