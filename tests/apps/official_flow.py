"""Flow control in an app written with Inngest's official Python SDK (``inngest`` from PyPI), served
over HTTP by FastAPI: stepq reads the limits from the app's sync and enforces them as it does for
in-process functions.

Steps append ``<function> <key> <run id> start|end <monotonic ns> <pid>`` to ``event.data["log"]``,
as tests/apps/flow_limits.py does, so tests/test_concurrency.py's replay applies.
"""

from __future__ import annotations

import asyncio
import os
import time

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="served-flow")


def _mark(ctx: inngest.Context, function: str, what: str) -> None:
    data = ctx.event.data
    with open(str(data["log"]), "a") as f:
        f.write(f"{function} {data.get('customer', '-')} {ctx.run_id} {what} {time.monotonic_ns()} {os.getpid()}\n")


@client.create_function(
    fn_id="limited",
    trigger=inngest.TriggerEvent(event="served/limited"),
    concurrency=[inngest.Concurrency(limit=2), inngest.Concurrency(limit=1, key="event.data.customer")],
)
async def limited(ctx: inngest.Context) -> int:
    """Two steps: at most 2 executing at once, 1 per customer."""

    async def work() -> int:
        _mark(ctx, "limited", "start")
        await asyncio.sleep(0.03)
        _mark(ctx, "limited", "end")
        return 1

    return await ctx.step.run("one", work) + await ctx.step.run("two", work)


api = fastapi.FastAPI()
inngest.fast_api.serve(api, client, [limited])
app = api
