"""A six-step function whose steps take a quarter of a second each, for the Redis restart test.

Each execution of a step appends ``<run_id> step-<i> <pid>`` to the file named by
``event.data["log"]`` (a file, not Redis: Redis is what the test restarts).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-restart")
STEPS = 6
STEP_S = 0.25


def expected_values(n: int) -> list[int]:
    """The values the steps compute for input ``n``."""
    values, value = [], n
    for i in range(1, STEPS + 1):
        value = value * 3 + i
        values.append(value)
    return values


@client.create_function(id="six-steps", trigger=inngest.TriggerEvent(event="test/six-steps"))
async def six_steps(ctx: inngest.Context) -> dict[str, Any]:
    path = ctx.event.data["log"]
    value = ctx.event.data["n"]
    values = []
    for i in range(1, STEPS + 1):

        async def step(previous: int, i: int = i) -> int:
            with open(path, "a") as f:
                f.write(f"{ctx.run_id} step-{i} {os.getpid()}\n")
            await asyncio.sleep(STEP_S)
            return previous * 3 + i

        value = await ctx.step.run(f"step-{i}", step, value)
        values.append(value)
    return {"n": ctx.event.data["n"], "values": values}
