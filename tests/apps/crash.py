"""Functions whose first step runs long, for the crash, lease and drain tests.

Every execution of the long step appends ``start <pid> <time> <token>`` to the file named by
``event.data["log"]`` when it begins and ``end <pid> <time> <token>`` when it returns, so a test
can tell which process ran it, when, how often, and which execution's result was committed (the
step returns its token). The step sleeps ``event.data["first_s"]`` seconds on its first execution
for the run and ``event.data.get("later_s", 0)`` on any later one, so a re-run finishes quickly.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-crash")


def note(path: str, what: str, token: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {os.getpid()} {time.time()!r} {token}\n")


def _begin(data: dict[str, Any]) -> tuple[str, float]:
    """Record a start; return its token and how long this execution should take."""
    path = data["log"]
    try:
        with open(path) as f:
            earlier = sum(1 for line in f if line.startswith("start "))
    except FileNotFoundError:
        earlier = 0
    token = uuid.uuid4().hex
    note(path, "start", token)
    return token, float(data["first_s"] if earlier == 0 else data.get("later_s", 0))


def _result(token: str) -> dict[str, Any]:
    return {"token": token, "pid": os.getpid()}


@client.create_function(id="slow-async", trigger=inngest.TriggerEvent(event="test/slow.async"), retries=0)
async def slow_async(ctx: inngest.Context) -> dict[str, Any]:
    """The long step is a coroutine awaiting ``asyncio.sleep``."""

    async def slow() -> dict[str, Any]:
        token, seconds = _begin(ctx.event.data)
        await asyncio.sleep(seconds)
        note(ctx.event.data["log"], "end", token)
        return _result(token)

    result = await ctx.step.run("slow", slow)
    after = await ctx.step.run("after", os.getpid)
    return {"slow": result, "after_pid": after}


@client.create_function(id="slow-thread", trigger=inngest.TriggerEvent(event="test/slow.thread"), retries=0)
async def slow_thread(ctx: inngest.Context) -> dict[str, Any]:
    """The long step is a plain ``def`` blocking in ``time.sleep`` (stepq runs it in a thread)."""

    def slow() -> dict[str, Any]:
        token, seconds = _begin(ctx.event.data)
        time.sleep(seconds)
        note(ctx.event.data["log"], "end", token)
        return _result(token)

    result = await ctx.step.run("slow", slow)
    after = await ctx.step.run("after", os.getpid)
    return {"slow": result, "after_pid": after}


@client.create_function(id="slow-sync-fn", trigger=inngest.TriggerEvent(event="test/slow.sync-fn"), retries=0)
def slow_sync_fn(ctx: inngest.ContextSync) -> dict[str, Any]:
    """A plain ``def`` function (run in a thread) whose step blocks in ``time.sleep``."""

    def slow() -> dict[str, Any]:
        token, seconds = _begin(ctx.event.data)
        time.sleep(seconds)
        note(ctx.event.data["log"], "end", token)
        return _result(token)

    result = ctx.step.run("slow", slow)
    after = ctx.step.run("after", os.getpid)
    return {"slow": result, "after_pid": after}


@client.create_function(id="nap-then-slow", trigger=inngest.TriggerEvent(event="test/nap.slow"), retries=0)
async def nap_then_slow(ctx: inngest.Context) -> dict[str, Any]:
    """The long step comes right after a sleep: the wake-up job's re-entry runs it."""
    await ctx.step.sleep("nap", "300ms")

    async def slow() -> dict[str, Any]:
        token, seconds = _begin(ctx.event.data)
        await asyncio.sleep(seconds)
        note(ctx.event.data["log"], "end", token)
        return _result(token)

    return {"slow": await ctx.step.run("slow", slow)}
