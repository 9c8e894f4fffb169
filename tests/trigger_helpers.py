"""Running cluster job triggers to their first event, as Airflow's triggerer would."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cluster_jobs.trigger import ClusterJobTrigger


async def first_event(trigger: ClusterJobTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")


def sense(trigger: ClusterJobTrigger, timeout: float = 300) -> dict:
    """The payload of the trigger's first event (raises if none comes in time)."""
    return asyncio.run(asyncio.wait_for(first_event(trigger), timeout))


def sense_all(triggers: Sequence[ClusterJobTrigger], timeout: float = 300) -> list[dict]:
    """The first event of each trigger, all run concurrently in one event loop (as one
    triggerer runs them: the jobs of a cluster share its poller)."""

    async def every() -> list[dict]:
        return list(await asyncio.gather(*(first_event(t) for t in triggers)))

    return asyncio.run(asyncio.wait_for(every(), timeout))
