"""Running a cluster job trigger to its first event, as Airflow's triggerer would."""

from __future__ import annotations

import asyncio

from cluster_jobs.trigger import ClusterJobTrigger


def sense(trigger: ClusterJobTrigger, timeout: float = 300) -> dict:
    """The payload of the trigger's first event (raises if none comes in time)."""

    async def first() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("trigger ended without an event")

    return asyncio.run(asyncio.wait_for(first(), timeout))
