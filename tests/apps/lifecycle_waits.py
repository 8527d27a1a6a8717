"""Runs that wait for other runs' ends, for the lifecycle-wait tests.

``steady`` completes with ``{"n": n + 1}``. ``awaiter`` waits (up to 60 s) for the
``stepq/function.finished`` of a ``steady`` run whose event has its own ``tag``, and returns its result.
``stoppable`` sleeps 60 s, and is cancelled by the ``inngest/function.finished`` of a run whose event
has its own ``tag``.
"""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-lifecycle-waits")


@client.create_function(id="steady", trigger=inngest.TriggerEvent(event="test/lw.steady"))
async def steady(ctx: inngest.Context) -> dict[str, Any]:
    n = ctx.event.data["n"]
    result: int = await ctx.step.run("add", lambda: n + 1)
    return {"n": result}


@client.create_function(id="awaiter", trigger=inngest.TriggerEvent(event="test/lw.awaiter"))
async def awaiter(ctx: inngest.Context) -> Any:
    found = await ctx.step.wait_for_event(
        "finished",
        event="stepq/function.finished",
        timeout="60s",
        if_exp="async.data.function_id == 't-lifecycle-waits-steady' && async.data.event.data.tag == event.data.tag",
    )
    return None if found is None else found.data["result"]


@client.create_function(
    id="stoppable",
    trigger=inngest.TriggerEvent(event="test/lw.stoppable"),
    cancel=[inngest.Cancel(event="inngest/function.finished", if_exp="async.data.event.data.tag == event.data.tag")],
)
async def stoppable(ctx: inngest.Context) -> str:
    await ctx.step.sleep("nap", "60s")
    return "woke"
