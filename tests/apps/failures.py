"""Failure handlers and the run-end events, for the on_failure tests.

``fragile`` fails for good (its step raises on both of its attempts); its ``on_failure`` handler
appends one JSON line ``{"run_id", "function_id", "error", "event"}`` per execution of its step to
``event.data.event.data.log``. ``failed-watcher`` (triggered by ``stepq/function.failed``) and
``finished-watcher`` (by ``stepq/function.finished`` of ``steady`` only) append the event's data
to the log named in the original event. ``steady`` completes.
"""

from __future__ import annotations

import json
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-failures")


def _record(path: str, what: str, data: dict[str, Any]) -> str:
    with open(path, "a") as f:
        f.write(json.dumps({"what": what, **data}) + "\n")
    return what


async def on_fragile_failure(ctx: inngest.Context) -> None:
    data = dict(ctx.event.data)
    path = data["event"]["data"]["log"]
    await ctx.step.run("record", _record, path, "on_failure", data)


@client.create_function(
    id="fragile",
    trigger=inngest.TriggerEvent(event="test/fragile"),
    retries=1,
    backoff=inngest.Backoff.of("100ms", jitter=0),
    on_failure=on_fragile_failure,
)
async def fragile(ctx: inngest.Context) -> None:
    def attempt() -> None:
        raise ValueError(f"fragile broke on attempt {ctx.attempt}")

    await ctx.step.run("attempt", attempt)


@client.create_function(id="steady", trigger=inngest.TriggerEvent(event="test/steady"))
async def steady(ctx: inngest.Context) -> dict[str, Any]:
    n = ctx.event.data["n"]
    result: int = await ctx.step.run("add", lambda: n + 1)
    return {"n": result}


@client.create_function(id="failed-watcher", trigger=inngest.TriggerEvent(event="stepq/function.failed"))
async def failed_watcher(ctx: inngest.Context) -> None:
    data = dict(ctx.event.data)
    await ctx.step.run("record", _record, data["event"]["data"]["log"], "failed", data)


@client.create_function(
    id="finished-watcher",
    trigger=inngest.TriggerEvent(
        event="stepq/function.finished", expression="event.data.function_id == 't-failures-steady'"
    ),
)
async def finished_watcher(ctx: inngest.Context) -> None:
    data = dict(ctx.event.data)
    await ctx.step.run("record", _record, data["event"]["data"]["log"], "finished", data)
