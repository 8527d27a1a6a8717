"""Functions with start limits (rate limit, idempotency, throttle, singleton), for tests/test_flow_starts.py.

Each function's first step appends ``<tag> <time.time()> <pid> <run_id>`` to the file named by
``event.data["log"]`` each time its code runs, so a test sees which runs started, when and in what
order (``tag`` is ``event.data["tag"]``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-flow-starts")


def _note(data: dict[str, Any], run_id: str) -> str:
    with open(data["log"], "a") as f:
        f.write(f"{data.get('tag', '-')} {time.time()!r} {os.getpid()} {run_id}\n")
    return str(data.get("tag", "-"))


@client.create_function(
    id="rated",
    trigger=inngest.TriggerEvent(event="flow/rated"),
    rate_limit=inngest.RateLimit(limit=10, period=60_000),
)
async def rated(ctx: inngest.Context) -> str:
    return await ctx.step.run("start", _note, ctx.event.data, ctx.run_id)


@client.create_function(
    id="rated-keyed",
    trigger=inngest.TriggerEvent(event="flow/rated-keyed"),
    rate_limit=inngest.RateLimit(limit=2, period=2_000, key="event.data.user"),
)
async def rated_keyed(ctx: inngest.Context) -> str:
    return await ctx.step.run("start", _note, ctx.event.data, ctx.run_id)


@client.create_function(
    id="idem",
    trigger=inngest.TriggerEvent(event="flow/idem"),
    idempotency="event.data.cart_id",
)
async def idem(ctx: inngest.Context) -> str:
    return await ctx.step.run("start", _note, ctx.event.data, ctx.run_id)


@client.create_function(
    id="throttled",
    trigger=inngest.TriggerEvent(event="flow/throttled"),
    throttle=inngest.Throttle(limit=5, period=1_000),
)
async def throttled(ctx: inngest.Context) -> str:
    return await ctx.step.run("start", _note, ctx.event.data, ctx.run_id)


@client.create_function(
    id="throttled-burst",
    trigger=inngest.TriggerEvent(event="flow/throttled-burst"),
    throttle=inngest.Throttle(limit=4, period=1_000, burst=3, key="event.data.k"),
)
async def throttled_burst(ctx: inngest.Context) -> str:
    return await ctx.step.run("start", _note, ctx.event.data, ctx.run_id)


RELEASE = dict(event="flow/release", if_exp="async.data.acct == event.data.acct", timeout="60s")


@client.create_function(
    id="single-skip",
    trigger=inngest.TriggerEvent(event="flow/single-skip"),
    singleton=inngest.Singleton(key="event.data.acct", mode="skip"),
)
async def single_skip(ctx: inngest.Context) -> str:
    tag = await ctx.step.run("start", _note, ctx.event.data, ctx.run_id)
    await ctx.step.wait_for_event("hold", **RELEASE)
    return tag


@client.create_function(
    id="single-cancel",
    trigger=inngest.TriggerEvent(event="flow/single-cancel"),
    singleton=inngest.Singleton(key="event.data.acct", mode="cancel"),
)
async def single_cancel(ctx: inngest.Context) -> str:
    tag = await ctx.step.run("start", _note, ctx.event.data, ctx.run_id)
    await ctx.step.wait_for_event("hold", **RELEASE)
    return tag


@client.create_function(
    id="single-slow",
    trigger=inngest.TriggerEvent(event="flow/single-slow"),
    singleton=inngest.Singleton(mode="skip"),
    retries=0,
)
async def single_slow(ctx: inngest.Context) -> str:
    """Its step sleeps ``first_s`` on its first execution (a worker is killed during it), then not."""

    async def slow() -> str:
        first = not os.path.exists(ctx.event.data["log"])
        _note(ctx.event.data, ctx.run_id)
        await asyncio.sleep(float(ctx.event.data["first_s"]) if first else 0)
        return "slept"

    return await ctx.step.run("slow", slow)


@client.create_function(
    id="child-rated",
    trigger=inngest.TriggerEvent(event="flow/child-rated"),
    rate_limit=inngest.RateLimit(limit=1, period=60_000),
)
async def child_rated(ctx: inngest.Context) -> str:
    return "child ran"


@client.create_function(id="invoker", trigger=inngest.TriggerEvent(event="flow/invoker"))
async def invoker(ctx: inngest.Context) -> Any:
    try:
        return await ctx.step.invoke("call", function=child_rated, data={})
    except inngest.StepError as exc:
        return {"error": exc.name, "message": exc.message}


@client.create_function(
    id="on-skipped",
    trigger=inngest.TriggerEvent(
        event="stepq/function.skipped", expression="event.data.function_id == 't-flow-starts-single-skip'"
    ),
)
async def on_skipped(ctx: inngest.Context) -> str:
    """Hears every start of single-skip that its singleton skipped."""
    data = ctx.event.data
    with open(data["event"]["data"]["log"], "a") as f:
        f.write(f"heard {time.time()!r} 0 {data['run_id']}|{data['reason']}\n")
    return str(data["reason"])
