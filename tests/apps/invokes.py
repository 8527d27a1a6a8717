"""A parent that invokes children, for the invoke tests.

``parent`` reads ``event.data.mode``: ``ok`` invokes ``double`` (by reference), ``by-id`` invokes it
by id, ``fail`` invokes ``breaks`` (a NonRetriableError in its step) and ``timeout`` invokes
``slow`` (which sleeps 5 s) with a 1 s timeout. A StepError from the invoke is caught and returned
as ``{"caught": {"name", "message"}}``.
"""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-invoke")


@client.create_function(id="double", trigger=inngest.TriggerEvent(event="test/double"))
async def double(ctx: inngest.Context) -> dict[str, Any]:
    n = ctx.event.data["n"]
    doubled: int = await ctx.step.run("double", lambda: n * 2)
    return {"doubled": doubled, "trigger": ctx.event.name}


@client.create_function(id="breaks", trigger=inngest.TriggerEvent(event="test/breaks"), retries=0)
async def breaks(ctx: inngest.Context) -> None:
    def fail() -> None:
        raise inngest.NonRetriableError("the child broke")

    await ctx.step.run("fail", fail)


@client.create_function(id="slow", trigger=inngest.TriggerEvent(event="test/slow"))
async def slow(ctx: inngest.Context) -> str:
    await ctx.step.sleep("nap", "5s")
    return "finally"


@client.create_function(id="parent", trigger=inngest.TriggerEvent(event="test/invoke.parent"))
async def parent(ctx: inngest.Context) -> dict[str, Any]:
    mode = ctx.event.data["mode"]
    result: object
    try:
        if mode == "ok":
            result = await ctx.step.invoke("call", function=double, data={"n": 21})
        elif mode == "by-id":
            result = await ctx.step.invoke_by_id("call", function_id="double", data={"n": 4})
        elif mode == "fail":
            result = await ctx.step.invoke("call", function=breaks, data={})
        else:
            result = await ctx.step.invoke("call", function=slow, data={}, timeout="1s")
    except inngest.StepError as exc:
        return {"caught": {"name": exc.name, "message": exc.message}}
    return {"result": result}
