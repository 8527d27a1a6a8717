"""The timer reconciler: no sleeping run depends on arq's job key living until its wake-up.

Every sleep is recorded in its shard's timers (``keys.timers``, a zset scored by due time) beside its delayed arq job.
If the job vanished — its key expired after arq's grace, or Redis evicted it under memory pressure —
the reconciler re-enqueues it from the timer. One worker at a time sweeps a shard, under a short lock.
"""

from __future__ import annotations

import structlog
from redis.exceptions import ResponseError

from . import deadletter, keys
from .connection import RedisClient
from .jobs import JobKind, JobSpec, enqueue_keys
from .scripts import Scripts
from .shards import shard_of, shards
from .store import now_ms

log = structlog.get_logger("stepq.timers")


def parse_member(member: str) -> tuple[str, str, int]:
    """(queue_id, run_id, position) from a timers-zset member ``queue|run|position``."""
    queue_id, run_id, position = member.split("|")
    return queue_id, run_id, int(position)


async def revive_overdue(
    redis: RedisClient, scripts: Scripts, *, overdue_ms: int = 60_000, batch: int = 200, lock_ms: int = 30_000
) -> int:
    """Re-enqueue wake jobs overdue by ``overdue_ms`` whose job is gone, in every shard; returns how
    many were revived."""
    revived = 0
    for shard in shards():
        revived += await revive_shard(redis, scripts, shard, overdue_ms=overdue_ms, batch=batch, lock_ms=lock_ms)
    return revived


async def revive_shard(
    redis: RedisClient,
    scripts: Scripts,
    shard: int,
    *,
    overdue_ms: int = 60_000,
    batch: int = 200,
    lock_ms: int = 30_000,
) -> int:
    """``revive_overdue`` for one shard. A shard with nothing overdue costs one read (workers sweep
    every shard in turn: see workers/shard_chores.py)."""
    timers, lock = keys.timers(shard), keys.timers_lock(shard)
    if not await redis.zrangebyscore(timers, "-inf", now_ms() - overdue_ms, start=0, num=1):
        return 0
    if not await redis.set(lock, b"1", px=lock_ms, nx=True):
        return 0
    revived = 0
    try:
        at = now_ms()
        members = await redis.zrangebyscore(timers, "-inf", at - overdue_ms, start=0, num=batch)
        for raw in members:
            try:
                member = raw.decode()
                queue_id, run_id, position = parse_member(member)
                if shard_of(run_id) != shard:
                    raise ValueError("its run is another shard's")
            except ValueError:  # UnicodeDecodeError included
                # kept for a person to look at, out of the way of every later sweep
                await deadletter.move_member(scripts, shard, timers, raw, "malformed timer member")
                log.error("timer.malformed", member=raw.decode(errors="backslashreplace"))
                continue
            try:
                step_key: bytes | None = await redis.hget(keys.run(run_id), "sleep_key")  # type: ignore[misc]
            except ResponseError as exc:  # the run's record is not a hash: skip it, sweep the rest
                log.error("timer.unreadable_run", run_id=run_id, error=str(exc))
                continue
            if step_key is None:  # the run ended or woke meanwhile
                await redis.zrem(timers, raw)
                continue
            job = JobSpec(run_id, position, kind=JobKind.WAKE, step_key=step_key.decode())
            outcome = await scripts.call(
                "revive_timer",
                [keys.run(job.run_id), *enqueue_keys(job, queue_id), timers],
                [member, job.encode(at), at, 30 * 86400 * 1000],
            )
            if outcome == b"revived":
                revived += 1
                log.warning("timer.revived", run_id=job.run_id, job_id=job.job_id)
    finally:
        await redis.delete(lock)
    return revived
