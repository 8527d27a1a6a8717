"""Functions for the managed-Redis tests (TLS, ACL users, Sentinel failover, READONLY/LOADING).

``chain`` runs three steps around a short sleep, each step waiting a multiple of ``pause_s`` (so that
runs are in flight when a test fails Redis over), and returns what they computed; with ``log`` set,
each step's execution appends a line to that file. ``waiter`` waits for an event
matched on ``data.key``, so the workload also uses waits, event matching and timers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-managed")


def expected(n: int) -> list[int]:
    """The values ``chain`` computes for input ``n``."""
    return [n + 1, (n + 1) * 2, (n + 1) * 2 + 3]


@client.create_function(id="chain", trigger=inngest.TriggerEvent(event="test/managed.chain"), retries=10)
async def chain(ctx: inngest.Context) -> dict[str, Any]:
    n = ctx.event.data["n"]
    # runs of different lengths (1 to 5 pauses a step), so that some are always in flight
    pause_s = float(ctx.event.data.get("pause_s", 0)) * (1 + n % 5)
    log = ctx.event.data.get("log")

    async def step(value: int, add: int, times: int) -> int:
        if log:  # each execution, to count those a failover repeats
            with open(log, "a") as f:
                f.write(f"{ctx.run_id} {add}{times}\n")
        await asyncio.sleep(pause_s)
        return (value + add) * times

    a = await ctx.step.run("a", step, n, 1, 1)
    await ctx.step.sleep("nap", 50)
    b = await ctx.step.run("b", step, a, 0, 2)
    c = await ctx.step.run("c", step, b, 3, 1)
    return {"n": n, "values": [a, b, c]}


@client.create_function(id="waiter", trigger=inngest.TriggerEvent(event="test/managed.wait"), retries=10)
async def waiter(ctx: inngest.Context) -> dict[str, Any]:
    got = await ctx.step.wait_for_event(
        "reply", event="test/managed.reply", timeout="60s", if_exp="event.data.key == async.data.key"
    )
    return {"key": ctx.event.data["key"], "reply": None if got is None else got.data["value"]}


#: Cancels the ``guarded`` run whose ``data.order`` the cancel event names.
CANCEL = inngest.Cancel(event="test/managed.cancel", if_exp="async.data.order == event.data.order")


@client.create_function(
    id="guarded",
    trigger=inngest.TriggerEvent(event="test/managed.guarded"),
    idempotency="event.data.order",
    throttle=inngest.Throttle(limit=100, period=1_000),
    concurrency=[inngest.Concurrency(limit=5, key="event.data.group")],
    cancel=[CANCEL],
    retries=10,
)
async def guarded(ctx: inngest.Context) -> dict[str, Any]:
    """Flow control on the sender's path (idempotency, throttle, a keyed concurrency limit), and a
    run that sleeps until ``data.sleep`` ms pass or a cancel event ends it."""
    order = ctx.event.data["order"]
    await ctx.step.sleep("hold", int(ctx.event.data.get("sleep", 0)) or 1)
    return {"order": await ctx.step.run("ship", lambda: f"shipped {order}")}


@client.create_function(
    id="debounced",
    trigger=inngest.TriggerEvent(event="test/managed.debounced"),
    debounce=inngest.Debounce(period=1_000, key="event.data.k"),
    retries=10,
)
async def debounced(ctx: inngest.Context) -> dict[str, Any]:
    return {"last": ctx.event.data["n"]}
