"""An app written against inngest-py 0.5's API, with ``import stepq as inngest``: the client's
Inngest keywords, a stdlib logger for ``ctx.logger``, typed steps with arguments, and invoke.

The logger writes ``LOG <message>`` lines to stdout, so a test reads them from the worker's output.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import pydantic

import stepq as inngest

logger = logging.getLogger("t-inngest-api")
logger.setLevel(logging.INFO)
logger.propagate = False
_handler = logging.StreamHandler(sys.stdout)
_handler.setFormatter(logging.Formatter("LOG %(message)s"))
logger.addHandler(_handler)

client = inngest.Inngest(
    app_id="t-inngest-api",
    is_production=False,
    logger=logger,
    middleware=[],
    request_timeout=5000,
    app_version="2024-06-01",
    serializer=inngest.PydanticSerializer(),
)


def add(a: int, b: int) -> int:
    return a + b


async def greet(name: str, punctuation: str) -> str:
    return f"hello {name}{punctuation}"


@client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="test/inngest.api.child"), retries=0)
async def child(ctx: inngest.Context) -> dict[str, Any]:
    return {"doubled": ctx.event.data["n"] * 2}


@client.create_function(
    fn_id="parent",
    name="Parent, with Inngest's keywords",
    trigger=inngest.TriggerEvent(event="test/inngest.api"),
    retries=1,
    cancel=[inngest.Cancel(event="test/inngest.api.cancel", if_exp="async.data.id == event.data.id")],
    timeouts=inngest.Timeouts(finish=60_000),  # ms, as in inngest-py
    middleware=[],
)
async def parent(ctx: inngest.Context) -> dict[str, Any]:
    ctx.logger.info("start %s", ctx.event.data["id"])
    total = await ctx.step.run("add", add, 2, 3)
    greeting = await ctx.step.run("greet", greet, "ada", "!")
    child_out = await ctx.step.invoke("invoke-child", function=child, data={"n": total})
    ctx.logger.info("done %s", total)
    return {"total": total, "greeting": greeting, "child": child_out}


@client.create_function(fn_id="sync-parent", trigger=inngest.TriggerEvent(event="test/inngest.api.sync"))
def sync_parent(ctx: inngest.ContextSync) -> dict[str, Any]:
    ctx.logger.info("sync start")
    total = ctx.step.run("add", add, 40, 2)
    by_id = ctx.step.invoke_by_id("invoke-child", function_id="child", data={"n": total})
    return {"total": total, "by_id": by_id}


@client.create_function(fn_id="sync-parallel", trigger=inngest.TriggerEvent(event="test/inngest.api.sync-parallel"))
def sync_parallel(ctx: inngest.ContextSync) -> list[int]:
    results = ctx.group.parallel(
        [
            lambda: ctx.step.run("one", add, 1, 0),
            lambda: ctx.step.run("two", add, 1, 1),
            lambda: ctx.step.run("three", add, 1, 2),
        ]
    )
    return list(results)


class Receipt(pydantic.BaseModel):
    """Not JSON: stored through the client's serializer by output_type."""

    order_id: int
    total: float
    at: dt.datetime


def make_receipt(order_id: int) -> Receipt:
    return Receipt(order_id=order_id, total=9.5, at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))


@client.create_function(
    fn_id="receipt",
    trigger=inngest.TriggerEvent(event="test/inngest.api.receipt.child"),
    output_type=Receipt,
)
async def receipt(ctx: inngest.Context) -> Receipt:
    made = await ctx.step.run("make", make_receipt, ctx.event.data["order_id"], output_type=Receipt)
    if not isinstance(made, Receipt):  # a memoized step comes back deserialized
        raise inngest.NonRetriableError(f"step gave a {type(made).__name__}")
    return made


@client.create_function(fn_id="receipts", trigger=inngest.TriggerEvent(event="test/inngest.api.receipt"))
async def receipts(ctx: inngest.Context) -> dict[str, Any]:
    got = await ctx.step.invoke("get", function=receipt, data={"order_id": ctx.event.data["order_id"]})
    return {"type": type(got).__name__, "order_id": got.order_id, "at": got.at.isoformat()}
