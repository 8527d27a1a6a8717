"""A five-step function for the two-worker test.

Every execution of a step appends ``<run_id> <step> <token>`` to the file named by
``event.data["log"]`` and returns that fresh token with its value, so the test can tell which
execution's result was committed.
"""

from __future__ import annotations

import uuid
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-fleet")
STEPS = 5


def expected_values(n: int) -> list[int]:
    """The values the steps compute for input ``n``."""
    values, value = [], n
    for i in range(1, STEPS + 1):
        value = value * 2 + i
        values.append(value)
    return values


@client.create_function(id="five-steps", trigger=inngest.TriggerEvent(event="test/five-steps"))
async def five_steps(ctx: inngest.Context) -> dict[str, Any]:
    path = ctx.event.data["log"]
    value = ctx.event.data["n"]
    values, tokens = [], []
    for i in range(1, STEPS + 1):

        def step(previous: int, i: int = i) -> dict[str, Any]:
            token = uuid.uuid4().hex
            with open(path, "a") as f:
                f.write(f"{ctx.run_id} step-{i} {token}\n")
            return {"value": previous * 2 + i, "token": token}

        result = await ctx.step.run(f"step-{i}", step, value)
        value = result["value"]
        values.append(value)
        tokens.append(result["token"])
    return {"values": values, "tokens": tokens}
