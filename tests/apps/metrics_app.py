"""A known workload for tests/test_metrics.py: steps that succeed, one that is retried, one that
fails for good, and start limits (a rate limit that skips, a throttle that holds)."""

from __future__ import annotations

import stepq as inngest

client = inngest.Inngest(app_id="t-metrics")
FAST = inngest.Backoff.of("50ms")


def _fine(name: str) -> str:
    return name


@client.create_function(id="ok", trigger=inngest.TriggerEvent(event="metrics/ok"))
async def ok(ctx: inngest.Context) -> str:
    await ctx.step.run("a", _fine, "a")
    return await ctx.step.run("b", _fine, "b")


@client.create_function(id="flaky", trigger=inngest.TriggerEvent(event="metrics/flaky"), backoff=FAST)
async def flaky(ctx: inngest.Context) -> str:
    def once_down() -> str:
        if ctx.attempt == 0:
            raise ConnectionError("upstream down on the first attempt")
        return "up"

    return await ctx.step.run("call", once_down)


@client.create_function(id="doomed", trigger=inngest.TriggerEvent(event="metrics/doomed"), retries=0)
async def doomed(ctx: inngest.Context) -> None:
    def charge() -> None:
        raise ValueError("card declined")  # no retries left: the error is memoized, the run fails

    await ctx.step.run("charge", charge)


@client.create_function(
    id="rated",
    trigger=inngest.TriggerEvent(event="metrics/rated"),
    rate_limit=inngest.RateLimit(limit=1, period=60_000),
)
async def rated(ctx: inngest.Context) -> str:
    return await ctx.step.run("a", _fine, "a")


@client.create_function(
    id="throttled",
    trigger=inngest.TriggerEvent(event="metrics/throttled"),
    throttle=inngest.Throttle(limit=1, period=60_000),
)
async def throttled(ctx: inngest.Context) -> str:
    return await ctx.step.run("a", _fine, "a")
