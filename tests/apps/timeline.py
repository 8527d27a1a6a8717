"""Functions for the timeline tests: one of every step kind, and one that fails.

``tour`` runs, in order: ``flaky`` (fails its first attempt, then succeeds), ``nap`` (a 1 s sleep),
``left`` and ``right`` in parallel, ``approve`` (waits up to 20 s for ``timeline/approved`` whose
``data.ref`` equals the trigger's), ``never`` (waits 1 s for ``timeline/never``: times out), and
``call`` (invokes ``child``). ``doomed``'s step ``boom`` fails both its attempts: the run fails.
``declined``'s step ``charge`` raises a NonRetriableError after ``fetch``: the run fails at once.
"""

from __future__ import annotations

from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-timeline")
FAST = inngest.Backoff.of("50ms")


@client.create_function(id="child", trigger=inngest.TriggerEvent(event="timeline/child"))
async def child(ctx: inngest.Context) -> dict[str, Any]:
    n = ctx.event.data["n"]
    doubled: int = await ctx.step.run("double", lambda: n * 2)
    return {"doubled": doubled}


@client.create_function(id="tour", trigger=inngest.TriggerEvent(event="timeline/tour"), backoff=FAST)
async def tour(ctx: inngest.Context) -> dict[str, Any]:
    def flaky() -> str:
        if ctx.attempt == 0:
            raise ConnectionError("upstream down")
        return "up"

    await ctx.step.run("flaky", flaky)
    await ctx.step.sleep("nap", "1s")

    async def side(which: str) -> str:
        return which

    pair = await ctx.group.parallel((lambda: ctx.step.run("left", side, "l"), lambda: ctx.step.run("right", side, "r")))
    approved = await ctx.step.wait_for_event(
        "approve", event="timeline/approved", timeout="20s", if_exp="async.data.ref == event.data.ref"
    )
    never = await ctx.step.wait_for_event("never", event="timeline/never", timeout="1s")
    called = await ctx.step.invoke("call", function=child, data={"n": 21})
    return {"pair": list(pair), "approved": approved is not None, "never": never is None, "called": called}


@client.create_function(id="doomed", trigger=inngest.TriggerEvent(event="timeline/doomed"), retries=1, backoff=FAST)
async def doomed(ctx: inngest.Context) -> None:
    def boom() -> None:
        raise ValueError(f"boom on attempt {ctx.attempt + 1}")

    await ctx.step.run("boom", boom)


@client.create_function(id="declined", trigger=inngest.TriggerEvent(event="timeline/declined"), retries=3, backoff=FAST)
async def declined(ctx: inngest.Context) -> None:
    def charge() -> None:
        raise inngest.NonRetriableError(f"card declined on attempt {ctx.attempt + 1}")

    await ctx.step.run("fetch", lambda: "card")
    await ctx.step.run("charge", charge)
