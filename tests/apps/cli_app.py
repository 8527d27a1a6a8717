"""Small functions for the ``stepq`` command's tests."""

from __future__ import annotations

import time
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-cli")


@client.create_function(id="greet", trigger=inngest.TriggerEvent(event="test/greet"))
async def greet(ctx: inngest.Context) -> str:
    who = ctx.event.data["who"]
    greeting: str = await ctx.step.run("greet", lambda: f"hello {who}")
    return greeting


@client.create_function(id="refuse", trigger=inngest.TriggerEvent(event="test/refuse"), retries=0)
async def refuse(ctx: inngest.Context) -> None:
    def check() -> None:
        raise inngest.NonRetriableError("not today")

    await ctx.step.run("check", check)


@client.create_function(id="fan", trigger=inngest.TriggerEvent(event="test/fan"))
async def fan(ctx: inngest.Context) -> list[Any]:
    """Two parallel steps that take measurable time, and a sleep beside them."""

    def work(i: int) -> int:
        time.sleep(0.05 * i)
        return i

    return list(
        await ctx.group.parallel(
            (
                lambda: ctx.step.run("slow-1", work, 1),
                lambda: ctx.step.run("slow-2", work, 2),
                lambda: ctx.step.sleep("nap", "300ms"),
            )
        )
    )


@client.create_function(
    id="flaky", trigger=inngest.TriggerEvent(event="test/flaky"), retries=3, backoff=inngest.Backoff.of("10ms")
)
async def flaky(ctx: inngest.Context) -> str:
    """Fails outside any step on the first attempt before its step and again after it: two
    function-level retries, one at each position of the run."""
    if ctx.attempt == 0:
        raise ValueError("first attempt failed")
    await ctx.step.run("half-way", lambda: None)
    return "third time lucky"


@client.create_function(id="approval", trigger=inngest.TriggerEvent(event="test/ask"))
async def approval(ctx: inngest.Context) -> bool:
    """Waits (status ``waiting``) for its approval event."""
    approved = await ctx.step.wait_for_event(
        "approved", event="test/approved", timeout="1h", if_exp="async.data.id == event.data.id"
    )
    return approved is not None
