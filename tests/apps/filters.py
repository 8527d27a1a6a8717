"""Functions whose triggers filter events with CEL expressions (``TriggerEvent(expression=...)``).

Each returns what it saw, so a test reads from the run's output which event started it.
"""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-filters")

SIGNUP = "test/filters.signup"


def _seen(ctx: inngest.Context) -> dict[str, Any]:
    return {"plan": ctx.event.data.get("plan"), "seats": ctx.event.data.get("seats")}


@client.create_function(
    id="pro-only", trigger=inngest.TriggerEvent(event=SIGNUP, expression="event.data.plan == 'pro'")
)
async def pro_only(ctx: inngest.Context) -> dict[str, Any]:
    plan = await ctx.step.run("read-plan", lambda: ctx.event.data["plan"])
    return {"plan": plan, "event_name": ctx.event.name}


@client.create_function(id="every-plan", trigger=inngest.TriggerEvent(event=SIGNUP))
async def every_plan(ctx: inngest.Context) -> dict[str, Any]:
    return _seen(ctx)


@client.create_function(
    id="pro-or-big",
    trigger=[
        inngest.TriggerEvent(event=SIGNUP, expression="event.data.plan == 'pro'"),
        inngest.TriggerEvent(event=SIGNUP, expression="event.data.seats >= 10"),
    ],
)
async def pro_or_big(ctx: inngest.Context) -> dict[str, Any]:
    return _seen(ctx)


@client.create_function(
    id="tagged",
    trigger=inngest.TriggerEvent(
        event=SIGNUP, expression="'beta' in event.data.tags && event.name == 'test/filters.signup' && event.id != ''"
    ),
)
async def tagged(ctx: inngest.Context) -> dict[str, Any]:
    return _seen(ctx)
