"""Debounced and batched functions (tests/test_flow_gather.py).

Each returns what it saw: the events' data (``ctx.events``), the event (``ctx.event``) and when its
code first ran (``started``, a step, so a retried run keeps its first value). When the event data
has a ``log`` path, the function appends the run's events to it each time a step's code runs.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-gather")


async def _seen(ctx: inngest.Context) -> dict[str, Any]:
    async def started() -> float:
        path = ctx.event.data.get("log")
        if isinstance(path, str) and path:
            with Path(path).open("a") as f:
                f.write(json.dumps({"run": ctx.run_id, "events": [e.data.get("i") for e in ctx.events]}) + "\n")
        return time.time()

    at = await ctx.step.run("started", started)
    return {"event": ctx.event.data, "events": [e.data for e in ctx.events], "started": at}


@client.create_function(
    id="debounced",
    trigger=inngest.TriggerEvent(event="gather/debounce"),
    debounce=inngest.Debounce(period=dt.timedelta(seconds=1), key="event.data.k"),
    retries=0,
)
async def debounced(ctx: inngest.Context) -> dict[str, Any]:
    return await _seen(ctx)


@client.create_function(
    id="debounced-capped",
    trigger=inngest.TriggerEvent(event="gather/debounce.capped"),
    debounce=inngest.Debounce(period=dt.timedelta(seconds=2), timeout=dt.timedelta(seconds=3)),
    retries=0,
)
async def debounced_capped(ctx: inngest.Context) -> dict[str, Any]:
    return await _seen(ctx)


@client.create_function(
    id="batched",
    trigger=inngest.TriggerEvent(event="gather/batch"),
    batch_events=inngest.Batch(max_size=10, timeout=dt.timedelta(seconds=2)),
    retries=0,
)
async def batched(ctx: inngest.Context) -> dict[str, Any]:
    return await _seen(ctx)


@client.create_function(
    id="batched-keyed",
    trigger=inngest.TriggerEvent(event="gather/batch.keyed"),
    batch_events=inngest.Batch(max_size=3, timeout=dt.timedelta(seconds=1), key="event.data.k"),
    retries=0,
)
async def batched_keyed(ctx: inngest.Context) -> dict[str, Any]:
    return await _seen(ctx)


@client.create_function(
    id="batched-if",
    trigger=inngest.TriggerEvent(event="gather/batch.if"),
    batch_events=inngest.Batch(max_size=5, timeout=dt.timedelta(seconds=2), if_exp="event.data.batch == true"),
    retries=0,
)
async def batched_if(ctx: inngest.Context) -> dict[str, Any]:
    return await _seen(ctx)


@client.create_function(
    id="batched-pairs",
    trigger=inngest.TriggerEvent(event="gather/batch.pairs"),
    batch_events=inngest.Batch(max_size=2, timeout=dt.timedelta(seconds=1)),
    retries=0,
)
async def batched_pairs(ctx: inngest.Context) -> dict[str, Any]:
    return await _seen(ctx)


@client.create_function(
    id="batched-start-timeout",
    trigger=inngest.TriggerEvent(event="gather/batch.start-timeout"),
    batch_events=inngest.Batch(max_size=5, timeout=dt.timedelta(seconds=2)),
    timeouts=inngest.Timeouts(start=dt.timedelta(seconds=1)),
    retries=0,
)
async def batched_start_timeout(ctx: inngest.Context) -> dict[str, Any]:
    """Its start timeout (1 s) is shorter than its batch's (2 s): it counts from when the batch fired."""
    return await _seen(ctx)


@client.create_function(
    id="batched-wide",
    trigger=inngest.TriggerEvent(event="gather/batch.wide"),
    batch_events=inngest.Batch(max_size=20, timeout=dt.timedelta(seconds=1)),
    retries=0,
)
async def batched_wide(ctx: inngest.Context) -> dict[str, Any]:
    return await _seen(ctx)
