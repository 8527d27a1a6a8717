"""Functions for the worker health endpoint tests (tests/test_worker_health.py).

- ``health/hold``: one step that waits until the file ``event.data["release"]`` exists, after
  writing ``event.data["started"]``: a step in flight for as long as the test wants (the drain test).
- ``health/block``: blocks the worker's event loop (``time.sleep`` in the function's own body, not in
  a step, which would run in a thread) for ``event.data["seconds"]``: a stuck loop (the liveness test).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-health")


@client.create_function(id="hold", trigger=inngest.TriggerEvent(event="health/hold"), retries=0)
async def hold(ctx: inngest.Context) -> str:
    async def wait_for_release() -> str:
        Path(ctx.event.data["started"]).write_text(ctx.run_id)
        release = Path(ctx.event.data["release"])
        while not release.exists():
            await asyncio.sleep(0.05)
        return "released"

    return await ctx.step.run("wait-for-release", wait_for_release)


@client.create_function(id="block", trigger=inngest.TriggerEvent(event="health/block"), retries=0)
async def block(ctx: inngest.Context) -> dict[str, Any]:
    time.sleep(float(ctx.event.data["seconds"]))  # on purpose: the event loop stops for this long
    return {"blocked_s": ctx.event.data["seconds"]}
