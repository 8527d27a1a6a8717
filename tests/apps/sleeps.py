"""Functions that sleep. Each appends to the file named by ``event.data["log"]``: ``sleep-call <t>``
every time the function reaches its sleep (memoized or not), then ``after <t>`` when the step after
the sleep runs."""

from __future__ import annotations

import datetime as dt
import time

import stepq as inngest

client = inngest.Inngest(app_id="t-sleeps")


def _note(path: str, what: str) -> float:
    now = time.time()
    with open(path, "a") as f:
        f.write(f"{what} {now!r}\n")
    return now


@client.create_function(id="nap", trigger=inngest.TriggerEvent(event="test/nap"))
async def nap(ctx: inngest.Context) -> dict[str, float]:
    path = ctx.event.data["log"]
    before = await ctx.step.run("before", time.time)
    _note(path, "sleep-call")
    await ctx.step.sleep("nap", "2s")
    after = await ctx.step.run("after", _note, path, "after")
    return {"before": before, "after": after}


@client.create_function(id="nap-ms", trigger=inngest.TriggerEvent(event="test/nap.ms"))
async def nap_ms(ctx: inngest.Context) -> dict[str, float]:
    """Inngest's Python code as written for inngest-py: a bare int is milliseconds (one second)."""
    path = ctx.event.data["log"]
    _note(path, "sleep-call")
    await ctx.step.sleep("nap", 1000)
    after = await ctx.step.run("after", _note, path, "after")
    return {"after": after}


@client.create_function(id="nap-until", trigger=inngest.TriggerEvent(event="test/nap.until"))
async def nap_until(ctx: inngest.Context) -> dict[str, float]:
    path = ctx.event.data["log"]
    until = dt.datetime.fromisoformat(ctx.event.data["until"])
    _note(path, "sleep-call")
    await ctx.step.sleep_until("wait", until)
    after = await ctx.step.run("after", _note, path, "after")
    return {"after": after}


@client.create_function(id="nap-twice", trigger=inngest.TriggerEvent(event="test/nap.twice"))
async def nap_twice(ctx: inngest.Context) -> dict[str, float]:
    """Two sleeps back to back: the second is reached by the re-entry of the first one's wake-up."""
    before = await ctx.step.run("before", time.time)
    await ctx.step.sleep("first", ctx.event.data.get("first", "1s"))
    await ctx.step.sleep("second", ctx.event.data.get("second", "2s"))
    after = await ctx.step.run("after", time.time)
    return {"before": before, "after": after}


@client.create_function(
    id="nap-then-flaky",
    trigger=inngest.TriggerEvent(event="test/nap.flaky"),
    backoff=inngest.Backoff.of("100ms", jitter=0),
)
async def nap_then_flaky(ctx: inngest.Context) -> int:
    """A step that fails on its first attempt, reached by the re-entry of a wake-up: its retry must
    re-enter where the run stands, not repeat the wake-up."""
    await ctx.step.sleep("nap", "1s")

    def flaky(attempt: int) -> int:
        if attempt == 0:
            raise RuntimeError("first attempt fails")
        return attempt

    return int(await ctx.step.run("flaky", flaky, ctx.attempt))
