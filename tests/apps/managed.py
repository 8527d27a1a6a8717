"""Functions for the managed-Redis tests (TLS, ACL users, Sentinel failover, READONLY/LOADING).

``chain`` runs three steps around a short sleep, each step waiting ``pause_s`` (so that runs are in
flight when a test fails Redis over), and returns what they computed. ``waiter`` waits for an event
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
    pause_s = float(ctx.event.data.get("pause_s", 0))

    async def step(value: int, add: int, times: int) -> int:
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
