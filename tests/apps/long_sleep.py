"""A function that sleeps for 30 days between two steps, for the timer-reconciler test.

``event.data["log"]`` names a file that gets ``after <pid> <time>`` each time the step after the
sleep runs.
"""

from __future__ import annotations

import os
import time

import stepq as inngest

client = inngest.Inngest(app_id="t-long-sleep")


def _after(path: str) -> float:
    now = time.time()
    with open(path, "a") as f:
        f.write(f"after {os.getpid()} {now!r}\n")
    return now


@client.create_function(id="month-nap", trigger=inngest.TriggerEvent(event="test/month-nap"))
async def month_nap(ctx: inngest.Context) -> dict[str, float]:
    before = await ctx.step.run("before", time.time)
    await ctx.step.sleep("month", "30d")
    after = await ctx.step.run("after", _after, ctx.event.data["log"])
    return {"before": before, "after": after}
