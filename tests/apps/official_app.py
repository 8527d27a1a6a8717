"""An app written with Inngest's official Python SDK (``inngest`` from PyPI) and its FastAPI handler.

stepq runs it as it would run under Inngest: ``uvicorn tests.apps.official_app:app`` with
``INNGEST_DEV=1 INNGEST_BASE_URL=<stepq api>`` (dev mode), or ``INNGEST_DEV=0`` and
``INNGEST_SIGNING_KEY`` (production mode: every call must be signed). The mode comes from the
environment, as in a real deployment.

Function code runs in the app's process, so tests observe it through files: when the event data
has a ``log`` path, steps append a line to it each time their code actually runs.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="compat")


def number(ctx: inngest.Context, field: str, default: int | None = None) -> int:
    value = ctx.event.data.get(field, default)
    assert isinstance(value, int), f"event.data.{field} must be an integer"
    return value


async def now() -> float:
    return time.time()


def note(ctx: inngest.Context, line: str) -> None:
    path = ctx.event.data.get("log")
    if isinstance(path, str) and path:
        with Path(path).open("a") as f:
            f.write(line + "\n")


@client.create_function(fn_id="seq", trigger=inngest.TriggerEvent(event="compat/seq"), retries=2)
async def seq(ctx: inngest.Context) -> dict[str, Any]:
    async def first() -> int:
        note(ctx, "a")
        return number(ctx, "x") + 1

    a = await ctx.step.run("a", first)

    async def second() -> int:
        note(ctx, "b")
        return a * 10

    b = await ctx.step.run("b", second)

    async def third() -> dict[str, int]:
        note(ctx, "c")
        return {"sum": a + b}

    c = await ctx.step.run("c", third)
    return {"a": a, "b": b, "c": c, "x": ctx.event.data["x"], "run_id": ctx.run_id}


@client.create_function(fn_id="loop", trigger=inngest.TriggerEvent(event="compat/loop"), retries=2)
async def loop(ctx: inngest.Context) -> list[int]:
    out: list[int] = []
    for i in range(number(ctx, "n")):

        async def square(i: int = i) -> int:
            note(ctx, f"item {i}")
            return i * i

        out.append(await ctx.step.run("item", square))
    return out


@client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event="compat/sleep"), retries=2)
async def sleeper(ctx: inngest.Context) -> dict[str, float]:
    before = await ctx.step.run("before", now)
    await ctx.step.sleep("nap", dt.timedelta(seconds=number(ctx, "seconds")))
    after = await ctx.step.run("after", now)
    return {"before": before, "after": after}


@client.create_function(fn_id="waiter", trigger=inngest.TriggerEvent(event="compat/wait"), retries=2)
async def waiter(ctx: inngest.Context) -> dict[str, Any]:
    approval = await ctx.step.wait_for_event(
        "approval",
        event="compat/approve",
        if_exp="async.data.order == event.data.order",
        timeout=dt.timedelta(seconds=number(ctx, "timeout", 30)),
    )
    return {"approval": approval.data if approval is not None else None}


@client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="compat/child"), retries=2)
async def child(ctx: inngest.Context) -> dict[str, Any]:
    async def double() -> int:
        return number(ctx, "n") * 2

    doubled = await ctx.step.run("double", double)
    return {"doubled": doubled, "event": ctx.event.name}


@client.create_function(fn_id="parent", trigger=inngest.TriggerEvent(event="compat/parent"), retries=2)
async def parent(ctx: inngest.Context) -> dict[str, Any]:
    result = await ctx.step.invoke("call-child", function=child, data={"n": ctx.event.data["n"]})
    return {"child": result}


@client.create_function(fn_id="emitter", trigger=inngest.TriggerEvent(event="compat/emit"), retries=2)
async def emitter(ctx: inngest.Context) -> dict[str, Any]:
    ids = await ctx.step.send_event(
        "emit",
        inngest.Event(name="compat/emitted", data={"tag": ctx.event.data["tag"], "log": ctx.event.data.get("log")}),
    )
    return {"ids": ids}


@client.create_function(fn_id="receiver", trigger=inngest.TriggerEvent(event="compat/emitted"), retries=2)
async def receiver(ctx: inngest.Context) -> dict[str, Any]:
    note(ctx, "received")
    return {"tag": ctx.event.data["tag"]}


@client.create_function(fn_id="flaky", trigger=inngest.TriggerEvent(event="compat/flaky"), retries=3)
async def flaky(ctx: inngest.Context) -> dict[str, Any]:
    async def attempt() -> str:
        note(ctx, f"attempt {ctx.attempt}")
        if ctx.attempt == 0:
            raise RuntimeError("the first attempt fails")
        return f"succeeded on attempt {ctx.attempt}"

    value = await ctx.step.run("flaky-step", attempt)
    return {"value": value}


@client.create_function(fn_id="declined", trigger=inngest.TriggerEvent(event="compat/declined"), retries=3)
async def declined(ctx: inngest.Context) -> str:
    async def charge() -> str:
        note(ctx, "charge")
        raise inngest.NonRetriableError("card declined")

    return await ctx.step.run("charge", charge)


@client.create_function(fn_id="fanout", trigger=inngest.TriggerEvent(event="compat/parallel"), retries=2)
async def fanout(ctx: inngest.Context) -> list[int]:
    def branch(i: int) -> Any:
        async def work() -> int:
            note(ctx, f"p{i}")
            return i * 10

        return lambda: ctx.step.run(f"p{i}", work)

    results = await ctx.group.parallel(tuple(branch(i) for i in range(3)))

    async def add() -> int:
        return sum(results)

    total = await ctx.step.run("total", add)
    return [*results, total]


async def doomed_failed(ctx: inngest.Context) -> dict[str, Any]:
    """The on_failure handler: runs once, on Inngest's ``inngest/function.failed`` event."""
    data = ctx.event.data
    original = data.get("event") or {}
    log = (original.get("data") or {}).get("log") if isinstance(original, dict) else None
    if isinstance(log, str):
        with Path(log).open("a") as f:
            f.write("on_failure\n")
    error = data.get("error") or {}
    return {
        "event": ctx.event.name,
        "function_id": data.get("function_id"),
        "run_id": data.get("run_id"),
        "message": error.get("message") if isinstance(error, dict) else str(error),
    }


@client.create_function(
    fn_id="doomed", trigger=inngest.TriggerEvent(event="compat/doomed"), retries=1, on_failure=doomed_failed
)
async def doomed(ctx: inngest.Context) -> None:
    note(ctx, f"doomed attempt {ctx.attempt}")
    raise RuntimeError("doomed from the start")


FUNCTIONS: list[inngest.Function[Any]] = [
    seq,
    loop,
    sleeper,
    waiter,
    child,
    parent,
    emitter,
    receiver,
    flaky,
    declined,
    fanout,
    doomed,
]

app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, FUNCTIONS)
