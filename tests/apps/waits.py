"""Functions that wait for events, for the wait_for_event tests.

``approval`` waits for ``app/approved`` whose ``data.request_id`` equals its trigger's (up to
``event.data.timeout``, default 10 s) and returns the approving event's data, or None on timeout.
``race`` waits up to 1 s for ``app/race`` with the same kind of condition and says which outcome it
saw, so a test can send the event at the instant the wait times out.
"""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-waits")

MATCH = "async.data.request_id == event.data.request_id"


@client.create_function(id="approval", trigger=inngest.TriggerEvent(event="test/approval.requested"))
async def approval(ctx: inngest.Context) -> dict[str, Any] | None:
    approved = await ctx.step.wait_for_event(
        "approval", event="app/approved", timeout=ctx.event.data.get("timeout", "10s"), if_exp=MATCH
    )
    return None if approved is None else dict(approved.data)


@client.create_function(id="race", trigger=inngest.TriggerEvent(event="test/race.started"))
async def race(ctx: inngest.Context) -> dict[str, Any]:
    got = await ctx.step.wait_for_event("race-wait", event="app/race", timeout="1s", if_exp=MATCH)
    return {"matched": got is not None, "data": None if got is None else dict(got.data)}
