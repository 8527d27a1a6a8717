"""Functions under concurrency limits and priority, for tests/test_concurrency.py.

Each step appends ``<function> <key> <run id> start|end <monotonic ns> <pid>`` to ``event.data["log"]``
(CLOCK_MONOTONIC is one clock for every process of the machine), so that a test can replay which
steps executed at once, across worker processes.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-flow-limits")


def _span(ctx: inngest.Context, function: str, seconds: float) -> int:
    data = ctx.event.data
    key = str(data.get("customer", "-"))
    with open(data["log"], "a") as f:
        f.write(f"{function} {key} {ctx.run_id} start {time.monotonic_ns()} {os.getpid()}\n")
    time.sleep(seconds)
    with open(data["log"], "a") as f:
        f.write(f"{function} {key} {ctx.run_id} end {time.monotonic_ns()} {os.getpid()}\n")
    return time.monotonic_ns()


@client.create_function(
    id="limited",
    trigger=inngest.TriggerEvent(event="test/limited"),
    concurrency=[inngest.Concurrency(limit=3), inngest.Concurrency(limit=1, key="event.data.customer")],
)
async def limited(ctx: inngest.Context) -> list[Any]:
    """Three steps: at most 3 executing at once, at most 1 per customer."""
    seconds = ctx.event.data.get("ms", 30) / 1000
    return [await ctx.step.run(f"s{i}", _span, ctx, "limited", seconds) for i in range(3)]


@client.create_function(
    id="sleeper",
    trigger=inngest.TriggerEvent(event="test/sleeper"),
    concurrency=[inngest.Concurrency(limit=1)],
)
async def sleeper(ctx: inngest.Context) -> None:
    """A step, a sleep, a step: a sleeping run holds no slot."""
    await ctx.step.run("before", _span, ctx, "sleeper", 0.05)
    await ctx.step.sleep("nap", 1000)
    await ctx.step.run("after", _span, ctx, "sleeper", 0.05)


@client.create_function(
    id="fair",
    trigger=inngest.TriggerEvent(event="test/fair"),
    concurrency=[inngest.Concurrency(limit=2), inngest.Concurrency(limit=2, key="event.data.customer")],
)
async def fair(ctx: inngest.Context) -> None:
    await ctx.step.run("work", _span, ctx, "fair", 0.03)


@client.create_function(
    id="slow",
    trigger=inngest.TriggerEvent(event="test/slow"),
    concurrency=[inngest.Concurrency(limit=1)],
)
async def slow(ctx: inngest.Context) -> None:
    """One step of ``event.data.seconds``: longer than the workers' lease in the heartbeat test."""
    await ctx.step.run("work", _span, ctx, "slow", ctx.event.data["seconds"])


@client.create_function(
    id="per-run",
    trigger=inngest.TriggerEvent(event="test/per-run"),
    concurrency=[inngest.RunConcurrency(limit=1, key="event.data.customer")],
)
async def per_run(ctx: inngest.Context) -> None:
    """A run-level limit: one run per customer from its first step to its end, sleep included."""
    await ctx.step.run("a", _span, ctx, "per-run", 0.02)
    await ctx.step.sleep("gap", 300)
    await ctx.step.run("b", _span, ctx, "per-run", 0.02)


@client.create_function(
    id="prio",
    trigger=inngest.TriggerEvent(event="test/prio"),
    concurrency=[inngest.Concurrency(limit=1)],
    priority=inngest.Priority(run="event.data.prio"),
)
async def prio(ctx: inngest.Context) -> None:
    await ctx.step.run("work", _span, ctx, "prio", float(ctx.event.data.get("seconds", 0.05)))


def _shared(name: str) -> Any:
    @client.create_function(
        id=name,
        trigger=inngest.TriggerEvent(event=f"test/{name}"),
        concurrency=[inngest.Concurrency(limit=1, key="event.data.customer", scope="env")],
    )
    async def shared(ctx: inngest.Context) -> None:
        await ctx.step.run("work", _span, ctx, "shared", 0.03)

    return shared


shared_a = _shared("shared-a")
shared_b = _shared("shared-b")


def _flaky(ctx: inngest.Context) -> int:
    """Fails on the step's first attempt when ``event.data.flaky``: a retry under the limit."""
    _span(ctx, "mixed", 0.01)
    if ctx.event.data.get("flaky") and ctx.attempt == 0:
        raise RuntimeError("flaky on purpose")
    return 1


@client.create_function(
    id="mixed",
    trigger=inngest.TriggerEvent(event="test/mixed"),
    retries=2,
    backoff=inngest.Backoff.of(dt.timedelta(milliseconds=200), maximum=dt.timedelta(seconds=1)),
    concurrency=[inngest.Concurrency(limit=4), inngest.Concurrency(limit=2, key="event.data.customer")],
    cancel=[inngest.Cancel(event="test/mixed.cancel", if_exp="async.data.n == event.data.n")],
)
async def mixed(ctx: inngest.Context) -> int:
    """Every kind of step under the limits: a retried step, parallel steps, a sleep, a wait that
    times out, then a last step; cancellable."""
    total = await ctx.step.run("flaky", _flaky, ctx)

    def branch(i: int) -> Callable[[], Awaitable[int]]:
        return lambda: ctx.step.run(f"p{i}", _span, ctx, "mixed", 0.02)

    parts = await ctx.group.parallel(tuple(branch(i) for i in range(3)))
    await ctx.step.sleep("nap", 200)
    await ctx.step.wait_for_event("never", event="test/mixed.never", timeout=dt.timedelta(milliseconds=100))
    await ctx.step.run("last", _span, ctx, "mixed", 0.02)
    return total + len(parts)


@client.create_function(
    id="combo",
    trigger=inngest.TriggerEvent(event="test/combo"),
    rate_limit=inngest.RateLimit(limit=20, period=dt.timedelta(minutes=1)),
    throttle=inngest.Throttle(limit=10, period=dt.timedelta(seconds=1), burst=2),
    concurrency=[inngest.Concurrency(limit=2)],
    priority=inngest.Priority(run="event.data.prio"),
)
async def combo(ctx: inngest.Context) -> None:
    """Options together: the rate limit drops, the throttle spaces starts, the limit holds steps."""
    await ctx.step.run("one", _span, ctx, "combo", 0.05)
    await ctx.step.run("two", _span, ctx, "combo", 0.05)
