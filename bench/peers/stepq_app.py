"""The peers workflow on stepq: ``stepq worker bench.peers.stepq_app:client``, and its submitter.

Each step is an async no-op returning ``time.time()`` (stepq awaits ``async def`` steps in its event
loop; plain ``def`` ones go to a thread); the final invocation records the run's step results.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

import stepq
from bench.peers.marks import apush, now

APP_ID = "bench-peers"
EVENT = "bench/peer"

client = stepq.Client(APP_ID)


async def anow() -> float:
    return now()


@client.create_function(id="peer", trigger=stepq.TriggerEvent(event=EVENT))
async def peer(ctx: stepq.Context) -> None:
    """``n`` no-op steps; with ``sleep`` > 0, a durable sleep after the first."""
    data = dict(ctx.event.data)
    stamps: list[float] = []
    for i in range(int(data["n"])):
        stamps.append(await ctx.step.run("s", anow))
        if i == 0 and float(data.get("sleep") or 0) > 0:
            await ctx.step.sleep("nap", dt.timedelta(seconds=float(data["sleep"])))
    await apush(data, stamps)


class Submitter:
    """Sends runs as events through stepq's public client (a batch in one call)."""

    def __init__(self) -> None:
        self.sender = stepq.Client(f"{APP_ID}-driver", redis_url=os.environ["STEPQ_REDIS_URL"])

    async def submit(self, runs: Sequence[dict[str, Any]]) -> None:
        await self.sender.send([stepq.Event(name=EVENT, data=dict(r)) for r in runs])

    async def aclose(self) -> None:
        await self.sender.aclose()
