"""A mixed workload for tests/test_queries.py: runs that complete, retry, fail, sleep, wait, fan out,
get skipped by a rate limit, queue behind a throttle, or run a slow step (a worker killed under it).

Steps that count attempts write to the file named by ``event.data["log"]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-queries")
FAST = inngest.Backoff.of("50ms")


@client.create_function(id="quick", trigger=inngest.TriggerEvent(event="q/quick"))
async def quick(ctx: inngest.Context) -> int:
    n: int = await ctx.step.run("echo", lambda: ctx.event.data.get("n", 0))
    return n


@client.create_function(id="picky", trigger=inngest.TriggerEvent(event="q/quick", expression="event.data.n > 100"))
async def picky(ctx: inngest.Context) -> str:
    return "big"


@client.create_function(id="flaky", trigger=inngest.TriggerEvent(event="q/flaky"), backoff=FAST)
async def flaky(ctx: inngest.Context) -> str:
    def call() -> str:
        path = Path(ctx.event.data["log"])
        with path.open("a") as f:
            f.write("attempt\n")
        if len(path.read_text().splitlines()) < 2:
            raise ConnectionError("first attempt fails")
        return "ok"

    result: str = await ctx.step.run("call", call)
    return result


@client.create_function(id="failer", trigger=inngest.TriggerEvent(event="q/fail"), backoff=FAST)
async def failer(ctx: inngest.Context) -> None:
    def boom() -> None:
        raise inngest.NonRetriableError("no")

    await ctx.step.run("boom", boom)


@client.create_function(id="napper", trigger=inngest.TriggerEvent(event="q/nap"))
async def napper(ctx: inngest.Context) -> str:
    await ctx.step.sleep("nap", ctx.event.data["nap"])
    return "rested"


@client.create_function(id="waiter", trigger=inngest.TriggerEvent(event="q/wait"))
async def waiter(ctx: inngest.Context) -> bool:
    got = await ctx.step.wait_for_event("go", event="q/go", timeout="60s", if_exp="async.data.k == event.data.k")
    return got is not None


@client.create_function(id="fanout", trigger=inngest.TriggerEvent(event="q/fanout"))
async def fanout(ctx: inngest.Context) -> list[Any]:
    async def work(i: int) -> int:
        return i

    def branch(i: int) -> Callable[[], Awaitable[Any]]:
        return lambda: ctx.step.run(f"b{i}", work, i)

    return list(await ctx.group.parallel(tuple(branch(i) for i in range(3))))


@client.create_function(
    id="rated", trigger=inngest.TriggerEvent(event="q/rated"), rate_limit=inngest.RateLimit(limit=2, period=60_000)
)
async def rated(ctx: inngest.Context) -> str:
    return "in"


@client.create_function(
    id="throttled", trigger=inngest.TriggerEvent(event="q/throttled"), throttle=inngest.Throttle(limit=1, period=60_000)
)
async def throttled(ctx: inngest.Context) -> str:
    return "through"


@client.create_function(id="slow", trigger=inngest.TriggerEvent(event="q/slow"))
async def slow(ctx: inngest.Context) -> str:
    async def work() -> str:
        await asyncio.sleep(ctx.event.data["s"])
        return "done"

    result: str = await ctx.step.run("work", work)
    return result
