"""Functions for the dashboard's real-browser tests (tests/test_dashboard_browser.py).

``flaky`` fails its one step on the first attempt and succeeds on the second (two attempts, the first
with an error to show); ``declined`` fails for good at once (a run to replay); ``napper`` sleeps a
minute (a run to cancel); ``echo`` returns its event's data (a payload to render inert).
"""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-dashboard")
FAST = inngest.Backoff.of("50ms")


@client.create_function(id="flaky", trigger=inngest.TriggerEvent(event="dash/flaky"), backoff=FAST)
async def flaky(ctx: inngest.Context) -> str:
    attempt = ctx.attempt

    def call_upstream() -> str:
        if attempt == 0:
            raise ConnectionError("upstream down on the first attempt")
        return f"ok on attempt {attempt + 1}"

    result: str = await ctx.step.run("call-upstream", call_upstream)
    return result


@client.create_function(id="declined", trigger=inngest.TriggerEvent(event="dash/declined"), retries=0)
async def declined(ctx: inngest.Context) -> None:
    def charge() -> None:
        raise inngest.NonRetriableError("card declined")

    await ctx.step.run("charge", charge)


@client.create_function(id="napper", trigger=inngest.TriggerEvent(event="dash/napper"))
async def napper(ctx: inngest.Context) -> str:
    await ctx.step.run("before", lambda: "before")
    await ctx.step.sleep("nap", "60s")
    return "woke"


@client.create_function(id="echo", trigger=inngest.TriggerEvent(event="dash/echo"))
async def echo(ctx: inngest.Context) -> dict[str, Any]:
    data: dict[str, Any] = await ctx.step.run("echo", lambda: dict(ctx.event.data))
    return data
