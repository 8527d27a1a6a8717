"""Functions whose steps return what stepq cannot store, and one that works (``echo``)."""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-bad")


@client.create_function(id="returns-set", trigger=inngest.TriggerEvent(event="test/returns-set"))
async def returns_set(ctx: inngest.Context) -> None:
    await ctx.step.run("make-set", lambda: {1, 2, 3})


@client.create_function(id="returns-object", trigger=inngest.TriggerEvent(event="test/returns-object"))
async def returns_object(ctx: inngest.Context) -> None:
    await ctx.step.run("make-object", lambda: {"thing": object()})


@client.create_function(id="big-output", trigger=inngest.TriggerEvent(event="test/big-output"))
async def big_output(ctx: inngest.Context) -> None:
    await ctx.step.run("make-big", lambda: "x" * 5000)


@client.create_function(id="echo", trigger=inngest.TriggerEvent(event="test/echo"))
async def echo(ctx: inngest.Context) -> dict[str, Any]:
    said: dict[str, Any] = await ctx.step.run("say", lambda: {"said": ctx.event.data.get("text")})
    return said
