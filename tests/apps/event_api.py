"""A small app for the HTTP event API tests: one function that echoes its event through a step."""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-event-api")


@client.create_function(id="echo", trigger=inngest.TriggerEvent(event="api-test/echo"))
async def echo(ctx: inngest.Context) -> dict[str, Any]:
    data = dict(ctx.event.data)
    doubled = await ctx.step.run("double", lambda: data.get("n", 0) * 2)
    return {"n": data.get("n"), "doubled": doubled, "event_id": ctx.event.id}
