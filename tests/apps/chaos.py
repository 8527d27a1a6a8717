"""A ten-step function for the chaos test (workers SIGKILLed and restarted while runs go on).

Every execution of a step adds a fresh token to the Redis set ``test-chaos:<run_id>:<i>`` (outside
stepq's ``stepq:`` keys, in the database of ``STEPQ_REDIS_URL``) before it returns that token
with its value, so the test can count each step's executions and check that the committed result
came from one of them.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from typing import Any

from redis.asyncio import Redis

import stepq as inngest

client = inngest.Inngest(app_id="t-chaos")
STEPS = 10
_marks: Redis | None = None


def marks() -> Redis:
    """This process's connection for side-effect records."""
    global _marks
    if _marks is None:
        _marks = Redis.from_url(os.environ["STEPQ_REDIS_URL"])
    return _marks


def executions_key(run_id: str, step: int) -> str:
    return f"test-chaos:{run_id}:{step}"


def expected_values(n: int) -> list[int]:
    """The values the steps compute for input ``n``."""
    values, value = [], n
    for i in range(1, STEPS + 1):
        value = (value * 7 + i) % 1_000_003
        values.append(value)
    return values


@client.create_function(id="ten-steps", trigger=inngest.TriggerEvent(event="test/ten-steps"))
async def ten_steps(ctx: inngest.Context) -> dict[str, Any]:
    value = ctx.event.data["n"]
    values, tokens = [], []
    for i in range(1, STEPS + 1):

        async def step(previous: int, i: int = i) -> dict[str, Any]:
            token = uuid.uuid4().hex
            await marks().sadd(executions_key(ctx.run_id, i), token)  # type: ignore[misc]
            await asyncio.sleep(random.uniform(0.02, 0.1))
            return {"value": (previous * 7 + i) % 1_000_003, "token": token}

        result = await ctx.step.run(f"step-{i}", step, value)
        value = result["value"]
        values.append(value)
        tokens.append(result["token"])
    return {"n": ctx.event.data["n"], "values": values, "tokens": tokens}
