"""Functions to cancel, for the cancellation and timeout tests.

Each step appends ``<run_id> <step>`` to the file named by ``event.data["log"]``, so a test can tell
which steps ran. ``sleeper`` and ``waiter`` are cancelled by ``app/cancel`` whose ``data.id`` equals
their trigger's; ``sleeper`` sleeps 6 s between its steps, ``waiter`` waits up to 6 s for an event
nobody sends. ``finish-timeout`` sleeps 10 s under ``Timeouts(finish="2s")``; ``start-timeout`` has
``Timeouts(start="1s")``.
"""

from __future__ import annotations

import stepq as inngest

client = inngest.Inngest(app_id="t-cancel")

RULE = inngest.Cancel(event="app/cancel", if_exp="async.data.id == event.data.id")


def _note(path: str, run_id: str, step: str) -> str:
    with open(path, "a") as f:
        f.write(f"{run_id} {step}\n")
    return step


@client.create_function(id="sleeper", trigger=inngest.TriggerEvent(event="test/sleeper"), cancel=[RULE])
async def sleeper(ctx: inngest.Context) -> str:
    path = ctx.event.data["log"]
    await ctx.step.run("before", _note, path, ctx.run_id, "before")
    await ctx.step.sleep("nap", "6s")
    await ctx.step.run("after", _note, path, ctx.run_id, "after")
    return "woke"


@client.create_function(id="waiter", trigger=inngest.TriggerEvent(event="test/waiter"), cancel=[RULE])
async def waiter(ctx: inngest.Context) -> str:
    path = ctx.event.data["log"]
    await ctx.step.run("before", _note, path, ctx.run_id, "before")
    await ctx.step.wait_for_event("hold", event="app/never", timeout="6s")
    await ctx.step.run("after", _note, path, ctx.run_id, "after")
    return "done waiting"


@client.create_function(
    id="finish-timeout",
    trigger=inngest.TriggerEvent(event="test/finish-timeout"),
    timeouts=inngest.Timeouts(finish="2s"),
)
async def finish_timeout(ctx: inngest.Context) -> str:
    path = ctx.event.data["log"]
    await ctx.step.run("before", _note, path, ctx.run_id, "before")
    await ctx.step.sleep("nap", "10s")
    await ctx.step.run("after", _note, path, ctx.run_id, "after")
    return "woke"


@client.create_function(
    id="start-timeout", trigger=inngest.TriggerEvent(event="test/start-timeout"), timeouts=inngest.Timeouts(start="1s")
)
async def start_timeout(ctx: inngest.Context) -> str:
    path = ctx.event.data["log"]
    await ctx.step.run("first", _note, path, ctx.run_id, "first")
    return "started"
