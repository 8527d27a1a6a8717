"""Functions for the dashboard's tests: one that completes after a few steps and a short sleep, one
that fails for good at a step, one that sleeps long (to be cancelled) and one that echoes its event
data back as its output and in a memoized step (script-injection tests)."""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-dash")
FAST = inngest.Backoff.of("20ms")


@client.create_function(id="orders", trigger=inngest.TriggerEvent(event="dash/order"), backoff=FAST)
async def orders(ctx: inngest.Context) -> dict[str, Any]:
    order = await ctx.step.run("load-order", lambda: {"id": ctx.event.data.get("id"), "total": 42})
    await ctx.step.sleep("cool-down", "50ms")
    receipt = await ctx.step.run("send-receipt", lambda: f"receipt for {order['id']}")
    return {"order": order, "receipt": receipt}


@client.create_function(id="broken", trigger=inngest.TriggerEvent(event="dash/broken"), retries=1, backoff=FAST)
async def broken(ctx: inngest.Context) -> None:
    await ctx.step.run("prepare", lambda: "ready")

    def charge() -> None:
        raise ValueError("card declined by the bank")

    await ctx.step.run("charge", charge)


@client.create_function(id="napper", trigger=inngest.TriggerEvent(event="dash/nap"))
async def napper(ctx: inngest.Context) -> str:
    await ctx.step.run("before", lambda: "awake")
    await ctx.step.sleep("long-nap", "1h")
    return "rested"


@client.create_function(id="echo", trigger=inngest.TriggerEvent(event="dash/echo"))
async def echo(ctx: inngest.Context) -> Any:
    said = await ctx.step.run("repeat", lambda: ctx.event.data.get("say"))
    return {"said": said}


@client.create_function(id="fanout", trigger=inngest.TriggerEvent(event="dash/fanout"))
async def fanout(ctx: inngest.Context) -> dict[str, Any]:
    left, right = await ctx.group.parallel(
        (lambda: ctx.step.run("left", lambda: "L"), lambda: ctx.step.run("right", lambda: "R"))
    )
    child = await ctx.step.invoke("call-echo", function=echo, data={"say": "from a parent"})
    paid = await ctx.step.wait_for_event(
        "wait-paid", event="dash/paid", timeout="1m", if_exp="async.data.order == event.data.order"
    )
    return {"parts": [left, right], "child": child, "paid": paid is not None}
