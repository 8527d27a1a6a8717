"""``step.send_event`` inside a function, for the send_event tests.

``announcer`` sends ``app/ping`` in a step, then runs two more steps (so it re-enters twice after
the send) and returns the sent ids. ``pinged`` (triggered by ``app/ping``) appends
``<run_id> <event id>`` to the file named by ``event.data["log"]``.
"""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-send")


@client.create_function(id="announcer", trigger=inngest.TriggerEvent(event="test/announce"))
async def announcer(ctx: inngest.Context) -> dict[str, Any]:
    log = ctx.event.data["log"]
    ids = await ctx.step.send_event("ping", inngest.Event(name="app/ping", data={"log": log, "from": ctx.run_id}))
    one: int = await ctx.step.run("one", lambda: 1)
    two: int = await ctx.step.run("two", lambda: one + 1)
    return {"ids": ids, "two": two}


@client.create_function(id="pinged", trigger=inngest.TriggerEvent(event="app/ping"))
async def pinged(ctx: inngest.Context) -> str:
    def note() -> str:
        with open(ctx.event.data["log"], "a") as f:
            f.write(f"{ctx.run_id} {ctx.event.id}\n")
        return ctx.event.id

    noted: str = await ctx.step.run("note", note)
    return noted
