"""Cron functions for the cron tests.

``every-second`` ticks each second (a six-field schedule, seconds first) and appends its tick to the
file named by ``STEPQ_TEST_CRON_LOG``. ``paris-morning`` never fires in a test; it shows the ``TZ=``
prefix in a real app.

Run as ``python -m tests.apps.cron_app schedule --redis-url URL --seconds S --out FILE``, the module
is a stand-in for a worker's cron loop: it calls ``CronScheduler.fire_due`` every ``--every`` seconds
for ``--seconds`` and writes the ids of the runs it created to ``FILE``, one a line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence

import stepq as inngest

client = inngest.Inngest(app_id="t-cron")


@client.create_function(id="every-second", trigger=inngest.TriggerCron(cron="*/1 * * * * *"))
async def every_second(ctx: inngest.Context) -> int:
    path = os.environ.get("STEPQ_TEST_CRON_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.event.ts} {ctx.event.id} {os.getpid()}\n")
    return ctx.event.ts


@client.create_function(id="paris-morning", trigger=inngest.TriggerCron(cron="TZ=Europe/Paris 0 9 * * 1-5"))
async def paris_morning(ctx: inngest.Context) -> str:
    return str(ctx.event.data["cron"])


async def _schedule(redis_url: str, seconds: float, every: float, out: str) -> None:
    from stepq.runtime.connection import close, open_redis
    from stepq.runtime.cron import CronScheduler, cron_functions
    from stepq.runtime.store import RunStore

    redis = await open_redis(redis_url)  # a single Redis or a cluster
    try:
        scheduler = CronScheduler(RunStore(redis), cron_functions(client.functions.values()))
        deadline = time.monotonic() + seconds
        with open(out, "a") as f:
            while time.monotonic() < deadline:
                for run_id in await scheduler.fire_due():
                    f.write(run_id + "\n")
                    f.flush()
                await asyncio.sleep(every)
    finally:
        await close(redis)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.apps.cron_app")
    parser.add_argument("command", choices=["schedule"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--every", type=float, default=0.05)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_schedule(args.redis_url, args.seconds, args.every, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
