"""Functions with start limits written with Inngest's official Python SDK (``inngest`` from PyPI),
served under uvicorn, for the served-function tests of tests/test_flow_starts.py.

A separate app from tests/apps/official_app.py (which other flow-control tests extend), with the
same habits: each function's first step appends ``<tag> <time.time()> <run_id>`` to the file named
by ``event.data["log"]`` when its code runs.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="compat-flow")


def note(ctx: inngest.Context) -> str:
    data: dict[str, Any] = dict(ctx.event.data)
    with Path(str(data["log"])).open("a") as f:
        f.write(f"{data.get('tag', '-')} {time.time()!r} 0 {ctx.run_id}\n")
    return str(data.get("tag", "-"))


@client.create_function(
    fn_id="throttled",
    trigger=inngest.TriggerEvent(event="compat-flow/throttled"),
    throttle=inngest.Throttle(limit=5, period=dt.timedelta(seconds=1)),
)
async def throttled(ctx: inngest.Context) -> str:
    async def start() -> str:
        return note(ctx)

    return await ctx.step.run("start", start)


@client.create_function(
    fn_id="rated",
    trigger=inngest.TriggerEvent(event="compat-flow/rated"),
    rate_limit=inngest.RateLimit(limit=3, period=dt.timedelta(minutes=1), key="event.data.user"),
)
async def rated(ctx: inngest.Context) -> str:
    async def start() -> str:
        return note(ctx)

    return await ctx.step.run("start", start)


@client.create_function(
    fn_id="single",
    trigger=inngest.TriggerEvent(event="compat-flow/single"),
    singleton=inngest.Singleton(key="event.data.acct", mode="cancel"),
)
async def single(ctx: inngest.Context) -> str:
    async def start() -> str:
        return note(ctx)

    tag = await ctx.step.run("start", start)
    await ctx.step.wait_for_event(
        "hold",
        event="compat-flow/release",
        if_exp="async.data.acct == event.data.acct",
        timeout=dt.timedelta(minutes=1),
    )
    return tag


@client.create_function(
    fn_id="idem",
    trigger=inngest.TriggerEvent(event="compat-flow/idem"),
    idempotency="event.data.cart_id",
)
async def idem(ctx: inngest.Context) -> str:
    async def start() -> str:
        return note(ctx)

    return await ctx.step.run("start", start)


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [throttled, rated, single, idem])
