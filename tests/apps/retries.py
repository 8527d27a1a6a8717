"""Step retries, NonRetriableError, a caught StepError, RetryAfterError.

Each step appends ``attempt <t>`` to the file named by ``event.data["log"]`` every time it runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-retries")
FAST = inngest.Backoff.of("50ms")


def _attempt(path: str) -> int:
    """Record an attempt; return how many attempts there have been, this one included."""
    with open(path, "a") as f:
        f.write(f"attempt {time.time()!r}\n")
    return len(Path(path).read_text().splitlines())


@client.create_function(id="flaky", trigger=inngest.TriggerEvent(event="test/flaky"), backoff=FAST)
async def flaky(ctx: inngest.Context) -> str:
    def call_upstream() -> str:
        n = _attempt(ctx.event.data["log"])
        if n <= 2:
            raise ConnectionError(f"upstream down (attempt {n})")
        return f"ok after {n}"

    result: str = await ctx.step.run("call-upstream", call_upstream)
    return result


@client.create_function(id="give-up", trigger=inngest.TriggerEvent(event="test/give-up"), backoff=FAST)
async def give_up(ctx: inngest.Context) -> None:
    def charge() -> None:
        _attempt(ctx.event.data["log"])
        raise inngest.NonRetriableError("card declined")

    await ctx.step.run("charge", charge)


@client.create_function(id="fallback", trigger=inngest.TriggerEvent(event="test/fallback"), retries=0, backoff=FAST)
async def fallback(ctx: inngest.Context) -> dict[str, Any]:
    def lookup() -> None:
        _attempt(ctx.event.data["log"])
        raise KeyError("no such customer")

    try:
        await ctx.step.run("lookup", lookup)
    except inngest.StepError as err:
        return {"fallback": True, "name": err.name, "message": err.message}
    return {"fallback": False}


@client.create_function(id="slow-down", trigger=inngest.TriggerEvent(event="test/slow-down"), backoff=FAST)
async def slow_down(ctx: inngest.Context) -> int:
    def call_rate_limited() -> int:
        n = _attempt(ctx.event.data["log"])
        if n == 1:
            raise inngest.RetryAfterError("slow down", 1500)  # ms, as in inngest-py
        return n

    attempts: int = await ctx.step.run("rate-limited", call_rate_limited)
    return attempts


@client.create_function(id="per-step", trigger=inngest.TriggerEvent(event="test/per-step"), retries=4, backoff=FAST)
async def per_step(ctx: inngest.Context) -> dict[str, Any]:
    """Two steps with their own policies: one never retried, one retried more than the function."""

    def once() -> None:
        _attempt(ctx.event.data["once"])
        raise ConnectionError("no retries for me")

    def patient() -> str:
        n = _attempt(ctx.event.data["patient"])
        if n <= 3:
            raise ConnectionError(f"not yet ({n})")
        return f"ok after {n}"

    try:
        await ctx.step.run("once", once, retries=0)
    except inngest.StepError as err:
        first = err.message
    second = await ctx.step.run("patient", patient, retries=3, backoff=inngest.Backoff.of("20ms"))
    return {"once": first, "patient": second}


@client.create_function(id="strict", trigger=inngest.TriggerEvent(event="test/strict"), retries=0, backoff=FAST)
async def strict(ctx: inngest.Context) -> str:
    """The function allows no retry; its one step asks for two."""

    def shaky() -> str:
        n = _attempt(ctx.event.data["log"])
        if n <= 2:
            raise ConnectionError(f"shaky ({n})")
        return f"ok after {n}"

    result: str = await ctx.step.run("shaky", shaky, retries=2)
    return result
