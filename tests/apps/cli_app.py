"""Two small functions for the ``stepq`` command's tests."""

from __future__ import annotations

import stepq as inngest

client = inngest.Inngest(app_id="t-cli")


@client.create_function(id="greet", trigger=inngest.TriggerEvent(event="test/greet"))
async def greet(ctx: inngest.Context) -> str:
    who = ctx.event.data["who"]
    greeting: str = await ctx.step.run("greet", lambda: f"hello {who}")
    return greeting


@client.create_function(id="refuse", trigger=inngest.TriggerEvent(event="test/refuse"), retries=0)
async def refuse(ctx: inngest.Context) -> None:
    def check() -> None:
        raise inngest.NonRetriableError("not today")

    await ctx.step.run("check", check)
