"""A run with a retry, a sleep, a parallel group, a wait that times out and an invoke, for the
tracing tests (tests/test_tracing.py). Step ``flaky`` fails on its first attempt; step ``left``
makes a span of the app's own (it must nest in the step's attempt span)."""

from __future__ import annotations

from typing import Any

import structlog
from opentelemetry import trace

import stepq as inngest

client = inngest.Inngest(app_id="t-traced")


@client.create_function(id="traced-child", trigger=inngest.TriggerEvent(event="test/traced.child"))
async def child(ctx: inngest.Context) -> int:
    n: int = ctx.event.data["n"]
    tripled: int = await ctx.step.run("triple", lambda: n * 3)
    return tripled


@client.create_function(
    id="traced", trigger=inngest.TriggerEvent(event="test/traced"), backoff=inngest.Backoff.of("50ms")
)
async def traced(ctx: inngest.Context) -> dict[str, Any]:
    def flaky() -> str:
        if ctx.attempt == 0:
            raise ConnectionError("upstream down")
        return "ok"

    def left() -> str:
        structlog.get_logger("app").info("app.left")  # a line of the app's: it carries the step's span
        with trace.get_tracer("app").start_as_current_span("app-work"):
            return "l"

    first = await ctx.step.run("flaky", flaky)
    await ctx.step.sleep("nap", "200ms")
    pair = await ctx.group.parallel((lambda: ctx.step.run("left", left), lambda: ctx.step.run("right", lambda: "r")))
    approval = await ctx.step.wait_for_event(
        "approval", event="test/traced.approval", timeout="300ms", if_exp="async.data.id == event.data.id"
    )
    tripled = await ctx.step.invoke("call", function=child, data={"n": 2})
    return {"first": first, "pair": list(pair), "approval": approval, "tripled": tripled}


@client.create_function(id="traced-wait", trigger=inngest.TriggerEvent(event="test/traced.wait"))
async def traced_wait(ctx: inngest.Context) -> str | None:
    approval = await ctx.step.wait_for_event(
        "approval", event="test/traced.approval", timeout="30s", if_exp="async.data.id == event.data.id"
    )
    return approval.id if approval is not None else None
