"""The stepq app the benchmarks run: ``stepq worker bench.apps:client``.

Functions record what the benchmark measures (a timestamp, a lateness) with one RPUSH into the
marks database (``$STEPQ_BENCH_MARKS_URL``, db 1 of the benchmark's private Redis). The raw arq
baseline jobs in ``bench/arq_worker.py`` record theirs the same way, so both pay the same round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from typing import Any

from redis.asyncio import Redis

import stepq
from bench.common import APP_ID, MARKS_ENV

client = stepq.Client(APP_ID)

_marks: Redis | None = None


def marks() -> Redis:
    """This process's connection to the marks database."""
    global _marks
    if _marks is None:
        url = os.environ.get(MARKS_ENV)
        if not url:
            raise RuntimeError(f"{MARKS_ENV} is not set: the benchmark functions need a database for their marks")
        _marks = Redis.from_url(url)
    return _marks


async def stamp(key: str) -> None:
    """Record the time now."""
    await marks().rpush(key, repr(time.time()))  # type: ignore[misc]


def noop() -> None:
    return None


async def anoop() -> None:
    return None


@client.create_function(id="chain", trigger=stepq.TriggerEvent(event="bench/chain"))
async def chain(ctx: stepq.Context) -> int:
    """``n`` steps in a row, each recording when it started: per-step latency."""
    n, key = int(ctx.event.data["n"]), str(ctx.event.data["key"])
    for _ in range(n):
        await ctx.step.run("s", stamp, key)
    return n


@client.create_function(id="steps", trigger=stepq.TriggerEvent(event="bench/steps"))
async def steps(ctx: stepq.Context) -> int:
    """``n`` no-op steps: throughput. Plain ``def`` handlers (as ``lambda: ...`` is), or async ones."""
    n = int(ctx.event.data.get("n", 10))
    handler = anoop if ctx.event.data.get("async") else noop
    for _ in range(n):
        await ctx.step.run("s", handler)
    return n


@client.create_function(id="loop", trigger=stepq.TriggerEvent(event="bench/loop"))
async def loop(ctx: stepq.Context) -> int:
    """``n`` no-op steps; the first records its start, the final invocation its end: replay cost."""
    n, key = int(ctx.event.data["n"]), str(ctx.event.data["key"])
    for i in range(n):
        await ctx.step.run("s", stamp if i == 0 else noop, *((key,) if i == 0 else ()))
    await stamp(key)  # only the last invocation gets past the loop
    return n


async def _since(key: str, sent: float) -> None:
    await marks().rpush(key, repr(time.time() - sent))  # type: ignore[misc]


@client.create_function(id="first", trigger=stepq.TriggerEvent(event="bench/first"))
async def first(ctx: stepq.Context) -> None:
    """One step recording the time since the event was sent: event -> first step latency."""
    await ctx.step.run("first", _since, str(ctx.event.data["key"]), float(ctx.event.data["t"]))


async def _woke(key: str, run_id: str) -> None:
    await marks().rpush(key, f"{run_id} {time.time()!r}")  # type: ignore[misc]


@client.create_function(id="nap", trigger=stepq.TriggerEvent(event="bench/nap"))
async def nap(ctx: stepq.Context) -> None:
    """Sleep, then record when the step after the sleep started: sleep lateness (the benchmark
    reads the wake-up time stepq scheduled from its timers)."""
    key, seconds = str(ctx.event.data["key"]), float(ctx.event.data["seconds"])
    await ctx.step.sleep("nap", dt.timedelta(seconds=seconds))
    await ctx.step.run("after", _woke, key, ctx.run_id)


async def _long(key: str, seconds: float) -> None:
    await marks().rpush(key, f"{os.getpid()} {time.time()!r}")  # type: ignore[misc]
    await asyncio.sleep(seconds)


@client.create_function(id="crash", trigger=stepq.TriggerEvent(event="bench/crash"))
async def crash(ctx: stepq.Context) -> None:
    """One long step recording which worker started it and when: crash recovery."""
    await ctx.step.run("long", _long, str(ctx.event.data["key"]), float(ctx.event.data["seconds"]))


@client.create_function(id="sleeper", trigger=stepq.TriggerEvent(event="bench/sleeper"))
async def sleeper(ctx: stepq.Context) -> Any:
    """Sleep an hour: Redis memory per sleeping run."""
    await ctx.step.sleep("nap", "1h")
    return None


# -- flow control (bench/flow.py) -------------------------------------------------------------------


def _log_line(path: str, line: str) -> None:
    """Append one line to a log file the benchmark reads back: no round trip on the measured path,
    and CLOCK_MONOTONIC is one clock for every process of the machine."""
    with open(path, "a") as f:
        f.write(line + "\n")


@client.create_function(
    id="steps-limited",
    trigger=stepq.TriggerEvent(event="bench/steps-limited"),
    concurrency=[stepq.Concurrency(limit=50, key="event.data.k")],
)
async def steps_limited(ctx: stepq.Context) -> int:
    """``steps`` under a limit of 50 steps at once per ``event.data.k``: the limit's overhead."""
    n = int(ctx.event.data.get("n", 10))
    for _ in range(n):
        await ctx.step.run("s", noop)
    return n


async def _handover_step(log: str, run_id: str) -> None:
    _log_line(log, f"start {run_id} {time.monotonic_ns()}")


@client.create_function(
    id="handover",
    trigger=stepq.TriggerEvent(event="bench/handover"),
    concurrency=[stepq.Concurrency(limit=1)],
)
async def handover(ctx: stepq.Context) -> None:
    """One step under a limit of 1: the run holds the slot from its step's job to its last job, whose
    commit frees it for the next waiting run. Logs the step's start and the last code the final
    invocation runs before that commit ('done')."""
    log = str(ctx.event.data["log"])
    await ctx.step.run("s", _handover_step, log, ctx.run_id)
    _log_line(log, f"done {ctx.run_id} {time.monotonic_ns()}")  # only the final invocation gets here


async def _hop(log: str, run_id: str) -> None:
    _log_line(log, f"start {run_id} {time.monotonic_ns()}")
    _log_line(log, f"done {run_id} {time.monotonic_ns()}")


@client.create_function(id="hops", trigger=stepq.TriggerEvent(event="bench/hops"))
async def hops(ctx: stepq.Context) -> None:
    """The hand-over's baseline, no limit: ``n`` steps in a row, each logging its start and, last
    thing before it returns, its end ('done'): one step's end -> the next step's start is the
    ordinary hop between two jobs of a run (the commit, a claim, the replay)."""
    log, n = str(ctx.event.data["log"]), int(ctx.event.data["n"])
    for i in range(n):
        await ctx.step.run(f"s{i}", _hop, log, ctx.run_id)


async def _hold(key: str, seconds: float) -> None:
    await marks().rpush(key, repr(time.time()))  # type: ignore[misc]
    await asyncio.sleep(seconds)


@client.create_function(
    id="hold",
    trigger=stepq.TriggerEvent(event="bench/hold"),
    concurrency=[stepq.Concurrency(limit=1, key="event.data.k")],
)
async def hold(ctx: stepq.Context) -> None:
    """One long step under a limit of 1 per ``event.data.k``: runs wait behind full keys."""
    await ctx.step.run("hold", _hold, str(ctx.event.data["marks"]), float(ctx.event.data["seconds"]))


async def _fair_step(log: str, key: str, run_id: str, seconds: float) -> None:
    _log_line(log, f"start {key} {run_id} {time.monotonic_ns()}")
    await asyncio.sleep(seconds)
    _log_line(log, f"end {key} {run_id} {time.monotonic_ns()}")


@client.create_function(
    id="fair",
    trigger=stepq.TriggerEvent(event="bench/fair"),
    concurrency=[stepq.Concurrency(limit=4), stepq.Concurrency(limit=4, key="event.data.k")],
)
async def fair(ctx: stepq.Context) -> None:
    """One step of ``event.data.ms`` under a function limit of 4 shared by every key, and 4 per key."""
    data = ctx.event.data
    await ctx.step.run("work", _fair_step, str(data["log"]), str(data["k"]), ctx.run_id, data["ms"] / 1000)
