"""What a Redis-backed system (stepq, arq, Celery) costs its Redis: CPU and commands per step under
load (W2), and commands per second with one idle worker connected."""

from __future__ import annotations

import asyncio
import dataclasses

from redis.asyncio import Redis

from bench.common import io_stats, redis_cpu


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    cpu_s: float
    commands: int


async def read(redis: Redis) -> Reading:
    """Redis's CPU seconds and commands processed so far (two INFO calls, counted by the next reading)."""
    cpu = await redis_cpu(redis)
    return Reading(cpu, (await io_stats(redis))["total_commands_processed"])


async def per_step(redis: Redis, before: Reading, steps: int) -> dict[str, float]:
    after = await read(redis)
    return {
        "w2_redis_cpu_ms_per_step": 1000 * (after.cpu_s - before.cpu_s) / steps,
        # Our own two INFO calls of `before` are in the count; Lua scripts' commands are too.
        "w2_redis_commands_per_step": (after.commands - before.commands - 2) / steps,
    }


async def idle_rate(redis: Redis, seconds: float) -> float:
    """Commands per second Redis processes while nothing is submitted (one idle worker connected)."""
    before = await read(redis)
    await asyncio.sleep(seconds)
    after = await read(redis)
    return (after.commands - before.commands - 2) / seconds
