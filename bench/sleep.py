"""Sleep lateness: 500 runs each sleeping 1 s; how late does the step after the sleep start?

stepq: each run asks for ``step.sleep("nap", timedelta(seconds=1))``; the step after it records when it started.
Lateness = that start - the wake-up time stepq scheduled (read from its timers zset while the runs
sleep). That covers the wake-up job's queue wait, loading the run and replaying to the next step.
Baseline: raw arq jobs enqueued with ``_defer_by=1``, lateness = start - due time (arq's score).
Sends alternate between the two with random gaps, so wake-ups are spread out as in an app (about
50 sleeps/s of each kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from bench.common import BenchResult, Clients, Env, Metric, Target, clients, percentile, summarize, wait_until

NAME = "sleep"


async def _watch_timers(c: Clients, due: dict[str, float], stop: asyncio.Event) -> None:
    """Collect every timer's due time (s) by the parts of its member (the run id is one of them)."""
    from stepq.runtime import keys

    while not stop.is_set():
        for member, score in await c.redis.zrange(keys.timers(0), 0, -1, withscores=True):
            for part in member.decode().split("|"):
                due.setdefault(part, score / 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    runs = env.size(500, 100)
    seconds = 1.0
    gap_ms = (0, 40)
    rng = random.Random(2)
    due: dict[str, float] = {}
    async with env.redis(NAME) as server, clients(server) as c:
        watch = await env.arq_workers(server) + await env.stepq_workers(server)
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch_timers(c, due, stop))
        try:
            await c.send("bench/nap", {"key": "warm", "seconds": 0.1})
            for _ in range(runs):
                await c.send("bench/nap", {"key": "stepq", "seconds": seconds})
                await asyncio.sleep(rng.uniform(*gap_ms) / 2000)
                await c.arq.enqueue_job("late", "arq", _defer_by=seconds)
                await asyncio.sleep(rng.uniform(*gap_ms) / 2000)

            async def complete() -> bool:
                lengths = [int(await c.marks.llen(k)) for k in ("stepq", "arq")]  # type: ignore[misc]
                return min(lengths) >= runs

            await wait_until(complete, 30 + seconds, "every sleep to end", interval=0.05, watch=watch)
        finally:
            stop.set()
            await watcher
        woke = [v.decode().split() for v in await c.marks.lrange("stepq", 0, -1)]  # type: ignore[misc]
        arq_ms = [1000 * float(v) for v in await c.marks.lrange("arq", 0, -1)]  # type: ignore[misc]
    stepq_ms = [1000 * (float(now) - due[run_id]) for run_id, now in woke if run_id in due]
    result.details = {
        "runs": runs,
        "sleep_s": seconds,
        "gap_ms": gap_ms,
        "stepq_lateness_ms": summarize(stepq_ms),
        "arq_lateness_ms": summarize(arq_ms),
        "stepq_early": sum(1 for x in stepq_ms if x < 0),
        "stepq_wakeups_without_timer_seen": len(woke) - len(stepq_ms),
    }
    label = "raw arq _defer_by=1 job lateness"
    result.metrics = [
        Metric(f"sleep lateness p50 ({runs} x 1 s)", "ms", percentile(stepq_ms, 50), percentile(arq_ms, 50), label),
        Metric(
            f"sleep lateness p99 ({runs} x 1 s)",
            "ms",
            percentile(stepq_ms, 99),
            percentile(arq_ms, 99),
            label,
            Target("<=", 20),
        ),
    ]
    return result
