"""Event sent -> first step started, on an idle worker.

stepq: the clock starts just before ``Client.send`` (validation, routing, storing the event, creating
the run and its first job) and stops when the function's first step starts in the worker. Baseline:
raw arq ``enqueue_job`` -> job started, same poll delay. Samples alternate between the two, spaced
by random gaps so that each finds its worker idle.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench.common import (
    BenchResult,
    Clients,
    Env,
    Metric,
    Target,
    clients,
    floats,
    percentile,
    summarize,
    wait_until,
)

NAME = "first_step"


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    samples = env.size(300, 60)
    gap_ms = (20, 40)
    rng = random.Random(1)
    async with env.redis(NAME) as server, clients(server) as c:
        watch = await env.arq_workers(server) + await env.stepq_workers(server)
        await _stepq(c, "warm:stepq")
        await _arq(c, "warm:arq")
        for _ in range(samples):
            await _stepq(c, "stepq")
            await asyncio.sleep(rng.uniform(*gap_ms) / 1000)
            await _arq(c, "arq")
            await asyncio.sleep(rng.uniform(*gap_ms) / 1000)

        async def complete() -> bool:
            lengths = [int(await c.marks.llen(k)) for k in ("stepq", "arq")]  # type: ignore[misc]
            return min(lengths) >= samples

        await wait_until(complete, 30, "every first step to start", watch=watch)
        stepq_ms = [1000 * x for x in await floats(c.marks, "stepq")]
        arq_ms = [1000 * x for x in await floats(c.marks, "arq")]
    result.details = {
        "samples": samples,
        "gap_ms": gap_ms,
        "stepq_ms": summarize(stepq_ms),
        "arq_ms": summarize(arq_ms),
    }
    label = "raw arq enqueue_job -> job started"
    result.metrics = [
        Metric(
            "event sent -> first step started, p50",
            "ms",
            percentile(stepq_ms, 50),
            percentile(arq_ms, 50),
            label,
            Target("<=", 10),
        ),
        Metric("event sent -> first step started, p99", "ms", percentile(stepq_ms, 99), percentile(arq_ms, 99), label),
    ]
    return result


async def _stepq(c: Clients, key: str) -> None:
    await c.send("bench/first", {"key": key, "t": time.time()})


async def _arq(c: Clients, key: str) -> None:
    await c.arq.enqueue_job("first", key, time.time())
