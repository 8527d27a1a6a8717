"""Runs for the Redis Cluster tests: steps, a sleep, a retried step and parallel steps in one run.

``mixed`` computes a value from ``event.data["n"]`` through all of them, so the test checks each
run's output; its flaky step fails on its first attempt (``ctx.attempt`` is 0) and succeeds on the
retry. Every execution of a step appends ``<run id> <step>`` to the file ``event.data["log"]``, so a
test can count executions (a step runs at least once; its result is committed once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-cluster")
FAST = inngest.Backoff.of("50ms")
BRANCHES = 4


def expected(n: int) -> dict[str, Any]:
    """What ``mixed`` returns for ``n``."""
    a = n + 1
    return {"a": a, "flaky": a * 2, "branches": [a * 2 + i for i in range(BRANCHES)]}


def _note(path: str, run_id: str, step: str) -> None:
    with open(path, "a") as f:
        f.write(f"{run_id} {step}\n")


@client.create_function(id="mixed", trigger=inngest.TriggerEvent(event="test/cluster.mixed"), backoff=FAST)
async def mixed(ctx: inngest.Context) -> dict[str, Any]:
    path, n = ctx.event.data["log"], int(ctx.event.data["n"])

    async def first() -> int:
        _note(path, ctx.run_id, "a")
        await asyncio.sleep(float(ctx.event.data.get("work_s", 0)))
        return n + 1

    a: int = await ctx.step.run("a", first)
    await ctx.step.sleep("nap", ctx.event.data.get("nap", "1s"))

    def flaky() -> int:
        _note(path, ctx.run_id, "flaky")
        if ctx.attempt == 0:
            raise ConnectionError("first attempt fails")
        return a * 2

    doubled: int = await ctx.step.run("flaky", flaky)

    def branch(i: int) -> Callable[[], Awaitable[Any]]:
        def work() -> int:
            _note(path, ctx.run_id, f"p{i}")
            return doubled + i

        return lambda: ctx.step.run(f"p{i}", work)

    results = await ctx.group.parallel(tuple(branch(i) for i in range(BRANCHES)))
    return {"a": a, "flaky": doubled, "branches": list(results)}


@client.create_function(
    id="sender", trigger=inngest.TriggerEvent(event="test/cluster.sender"), retries=2, backoff=FAST
)
async def sender(ctx: inngest.Context) -> list[str]:
    """Sends one event from a step with the app's own client (``client.send``, as app code does)."""

    async def send() -> list[str]:
        return await client.send(inngest.Event(name="test/cluster.sent", data={"by": ctx.run_id}))

    return await ctx.step.run("send", send)
