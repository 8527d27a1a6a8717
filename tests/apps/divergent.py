"""A function whose step id is random: every re-entry asks for a step its history does not hold.

Each execution of the step appends its step id to the file named by ``event.data["log"]``.
"""

from __future__ import annotations

import uuid

import stepq as inngest

client = inngest.Inngest(app_id="t-divergent")


@client.create_function(id="random-step", trigger=inngest.TriggerEvent(event="test/random-step"))
async def random_step(ctx: inngest.Context) -> str:
    step_id = f"step-{uuid.uuid4().hex[:8]}"

    def work() -> str:
        with open(ctx.event.data["log"], "a") as f:
            f.write(f"{step_id}\n")
        return step_id

    await ctx.step.run(step_id, work)
    await ctx.step.run("second", lambda: "never reached with the same history")
    return "unreachable"
