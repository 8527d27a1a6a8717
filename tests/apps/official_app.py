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
import json
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


@client.create_function(fn_id="bigstate", trigger=inngest.TriggerEvent(event="compat/bigstate"), retries=1)
async def bigstate(ctx: inngest.Context) -> dict[str, Any]:
    """Three 1.5 MiB step outputs: the call after them is over 4 MiB, so the executor says ``use_api``
    and the SDK fetches the memo and the events from the API (``/v0/runs/{id}/actions|batch``)."""
    sizes = []
    for i in range(3):

        async def blob(i: int = i) -> str:
            return chr(ord("a") + i) * (1536 * 1024)

        value = await ctx.step.run(f"blob{i}", blob)
        assert value == chr(ord("a") + i) * (1536 * 1024)
        sizes.append(len(value))

    async def tail() -> str:
        note(ctx, "tail")
        return "tail"

    last = await ctx.step.run("tail", tail)
    return {"sizes": sizes, "last": last, "tag": ctx.event.data.get("tag")}


@client.create_function(
    fn_id="cancellable",
    trigger=inngest.TriggerEvent(event="compat/order.placed"),
    cancel=[inngest.Cancel(event="compat/order.cancelled", if_exp="async.data.order == event.data.order")],
    retries=1,
)
async def cancellable(ctx: inngest.Context) -> str:
    await ctx.step.sleep("cool-off", dt.timedelta(seconds=30))

    async def ship() -> str:
        note(ctx, "shipped")
        return "shipped"

    return await ctx.step.run("ship", ship)


async def gathered(ctx: inngest.Context) -> dict[str, Any]:
    """What a debounced or batched run saw (tests/test_flow_gather.py): its event, its events (as
    ``ctx.events`` came over HTTP) and when its first step's code ran."""
    started = await ctx.step.run("started", now)
    return {"event": ctx.event.data, "events": [e.data for e in ctx.events], "started": started}


@client.create_function(
    fn_id="debounced",
    trigger=inngest.TriggerEvent(event="compat/debounce"),
    debounce=inngest.Debounce(period=dt.timedelta(seconds=1), key="event.data.k"),
    retries=1,
)
async def debounced(ctx: inngest.Context) -> dict[str, Any]:
    return await gathered(ctx)


@client.create_function(
    fn_id="batched",
    trigger=inngest.TriggerEvent(event="compat/batch"),
    batch_events=inngest.Batch(
        max_size=3, timeout=dt.timedelta(seconds=1), key="event.data.k", if_exp="event.data.k != 'solo'"
    ),
    retries=1,
)
async def batched(ctx: inngest.Context) -> dict[str, Any]:
    return await gathered(ctx)


FUNCTIONS: list[inngest.Function[Any]] = [
    bigstate,
    cancellable,
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
    debounced,
    batched,
]


class UseApiProbe:
    """ASGI middleware that notes (in the event's ``log`` file) each call that said ``use_api``, so a
    test can tell that the SDK had to fetch the state from the API."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.inner(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def tap() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self.inspect(b"".join(chunks))
            return message

        await self.inner(scope, tap, send)

    @staticmethod
    def inspect(body: bytes) -> None:
        try:
            payload = json.loads(body)
            path = payload["event"]["data"]["log"]
        except (ValueError, KeyError, TypeError):
            return
        if payload.get("use_api") and isinstance(path, str):
            with Path(path).open("a") as f:
                f.write(f"use_api steps={len(payload.get('steps') or {})}\n")


api = fastapi.FastAPI()
inngest.fast_api.serve(api, client, FUNCTIONS)
app = UseApiProbe(api)
