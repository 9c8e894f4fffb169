"""Registered model versions worth re-evaluating: each ``lora-regret-*`` model's latest
version and every version an alias points to, with the training run behind each."""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.names import REGISTRY_PREFIX, TAG_MODEL


class VersionTarget(BaseModel):
    """One registered version and the run its evaluation is logged into."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    model: str
    run_id: str
    aliases: tuple[str, ...] = ()

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _chosen(client: Any, name: str) -> dict[str, list[str]]:
    """version -> aliases, for the latest version and every aliased one."""
    registered = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}'")
    chosen: dict[str, list[str]] = {}
    if versions:
        chosen[str(max(int(v.version) for v in versions))] = []
    for alias, version in (registered.aliases or {}).items():
        chosen.setdefault(str(version), []).append(alias)
    return chosen


def versions_to_evaluate(client: Any | None = None) -> list[VersionTarget]:
    """Every chosen version of every lora-regret registered model, in a stable order."""
    if client is None:
        from tracking.store import client as store_client

        client = store_client()
    targets = []
    for registered in client.search_registered_models(f"name LIKE '{REGISTRY_PREFIX}%'"):
        for version, aliases in sorted(_chosen(client, registered.name).items(),
                                       key=lambda item: int(item[0])):
            mv = client.get_model_version(registered.name, version)
            run_id = mv.tags.get("run_id") or mv.run_id
            if not run_id or not mv.tags.get(TAG_MODEL):
                print(f"[nightly] {registered.name}/{version}: no run_id/model tag, skipped",
                      file=sys.stderr)
                continue
            targets.append(VersionTarget(name=registered.name, version=version,
                                         model=mv.tags[TAG_MODEL], run_id=run_id,
                                         aliases=tuple(sorted(aliases))))
    return targets
