"""Which sweeps a report run covers: from asset events, a hand-given id, or all.

Kept apart from the DAG so it is tested without Airflow; the DAG passes in the
``extra`` dicts of its triggering asset events and its ``sweep_id`` param. Both come
from outside (another DAG's event, the trigger form), so every id is validated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reporting.config import check_sweep_id


def sweep_ids_to_report(param: str | None, event_extras: Iterable[Mapping[str, Any]]) -> list[str]:
    """The hand-given ``sweep_id`` if any, else the sweep ids named by the triggering
    asset events (in order, without repeats); empty means "every sweep"."""
    if param is not None and str(param).strip():
        return [check_sweep_id(str(param).strip())]
    found: list[str] = []
    for extra in event_extras:
        value = (extra or {}).get("sweep_id")
        if value is None or value == "":
            continue
        sweep_id = check_sweep_id(str(value))
        if sweep_id not in found:
            found.append(sweep_id)
    return found
