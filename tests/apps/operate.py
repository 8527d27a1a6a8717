"""A mixed app for tests/test_operate_under_faults.py: operator actions and the run indexes under
concurrency and a killed worker.

- ``mixed`` (``operate/mixed``): a step that fails on its first attempt, a parallel group of two, a
  short sleep, a wait that times out, an invoke of ``child``, then ``last``, which fails for good
  (``NonRetriableError``) when ``data.doom`` is set: those runs end failed, to be replayed and resumed.
- ``child``: one step.
- ``sleepy`` (``operate/sleepy``): one step, then sleeps an hour: runs to cancel in bulk.
"""

from __future__ import annotations

from typing import Any

import stepq

client = stepq.Client("t-operate")
FAST = stepq.Backoff.of("50ms")


@client.create_function(id="child", trigger=stepq.TriggerEvent(event="operate/child"), retries=1, backoff=FAST)
async def child(ctx: stepq.Context) -> int:
    n = int(ctx.event.data.get("n", 0))
    doubled: int = await ctx.step.run("double", lambda: n * 2)
    return doubled


@client.create_function(id="mixed", trigger=stepq.TriggerEvent(event="operate/mixed"), retries=2, backoff=FAST)
async def mixed(ctx: stepq.Context) -> dict[str, Any]:
    n = int(ctx.event.data.get("n", 0))

    def flaky() -> int:
        if ctx.attempt == 0:
            raise ConnectionError("upstream down on the first attempt")
        return n

    a = await ctx.step.run("flaky", flaky)
    pair = await ctx.group.parallel(
        (lambda: ctx.step.run("p1", lambda: a + 1), lambda: ctx.step.run("p2", lambda: a + 2))
    )
    await ctx.step.sleep("nap", "200ms")
    found = await ctx.step.wait_for_event("hear", event="operate/never", timeout="300ms")
    doubled = await ctx.step.invoke("call", function=child, data={"n": n})

    def last() -> str:
        if ctx.event.data.get("doom"):
            raise stepq.NonRetriableError("doomed")
        return "ok"

    end = await ctx.step.run("last", last)
    return {"a": a, "pair": list(pair), "heard": found is not None, "doubled": doubled, "end": end}


@client.create_function(id="sleepy", trigger=stepq.TriggerEvent(event="operate/sleepy"), retries=0)
async def sleepy(ctx: stepq.Context) -> None:
    await ctx.step.run("first", lambda: 1)
    await ctx.step.sleep("long", "1h")
