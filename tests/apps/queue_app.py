"""Functions for the job queue's tests (tests/test_job_queue.py, tests/test_claim_load.py): a long
chain of steps, a short run, and sleeps."""

from __future__ import annotations

import asyncio
import os
import time

import stepq

client = stepq.Inngest(app_id="t-queue")


@client.create_function(id="chain", trigger=stepq.TriggerEvent(event="test/chain"))
async def chain(ctx: stepq.Context) -> int:
    """``n`` no-op steps in a row."""
    total = 0
    for i in range(int(ctx.event.data["n"])):
        total += await ctx.step.run(f"s{i}", _same, i)
    return total


@client.create_function(id="nap-for", trigger=stepq.TriggerEvent(event="test/nap.for"))
async def nap_for(ctx: stepq.Context) -> float:
    """Sleeps ``ms`` milliseconds; returns when the step after the sleep ran."""
    await ctx.step.sleep("nap", int(ctx.event.data["ms"]))
    return await ctx.step.run("after", time.time)


def _same(i: int) -> int:
    return i


def _done() -> str:
    return "done"


def _woke() -> str:
    return "woke"


@client.create_function(id="short", trigger=stepq.TriggerEvent(event="test/short"))
async def short(ctx: stepq.Context) -> str:
    return await ctx.step.run("only", _done)


@client.create_function(id="nap", trigger=stepq.TriggerEvent(event="test/nap"))
async def nap(ctx: stepq.Context) -> str:
    await ctx.step.sleep("nap", "2s")
    return await ctx.step.run("after", _woke)


@client.create_function(id="nap-hold", trigger=stepq.TriggerEvent(event="test/nap.hold"))
async def nap_hold(ctx: stepq.Context) -> str:
    """Sleeps 1 s; the step after the sleep takes ``T_QUEUE_HOLD_S`` seconds (the worker's env)."""
    await ctx.step.sleep("nap", "1s")
    return await ctx.step.run("hold", _hold)


async def _hold() -> str:
    await asyncio.sleep(float(os.environ.get("T_QUEUE_HOLD_S", "0")))
    return "held"
