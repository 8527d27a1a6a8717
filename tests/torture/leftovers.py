"""What an ended run must not leave behind, and why a run that never ended is stuck.

An ended run holds no wait, timer, pending step or queued job (``run_leftovers``); once every run
has ended, the queues, the timers and the wait indexes are empty (``global_leftovers``). A run that
never ended gets a likely reason from what it left (``diagnose``), to sort failures by.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from stepq.runtime import keys, shards
from stepq.runtime.connection import RedisClient


def run_leftovers(raw: dict[bytes, bytes], pending: set[bytes], jobs: set[bytes]) -> list[str]:
    """What an ended run's record, pending set and delayed-jobs set still hold."""
    out = []
    waits = [k.decode() for k in raw if k.startswith((b"wait:", b"cancel"))]
    if waits:
        out.append(f"waits still registered: {waits}")
    for field in (b"timer", b"sleep_key", b"join_id", b"next_job"):
        if field in raw:
            out.append(f"run record keeps {field.decode()}={raw[field].decode()}")
    if pending:
        out.append(f"pending set not dropped: {sorted(p.decode() for p in pending)}")
    if jobs:
        out.append(f"delayed-jobs set not dropped: {sorted(j.decode() for j in jobs)}")
    return out


async def queues(redis: RedisClient) -> list[bytes]:
    """The queue zsets (arq keeps a health-check string under the same prefix)."""
    found = [k for shard in shards.shards() async for k in redis.scan_iter(match=keys.queue(shard, "*"))]
    return [k for k in found if await redis.type(k) == b"zset"]


async def jobs_of(redis: RedisClient, run_id: str) -> list[str]:
    """The run's queued jobs, with how late each is and whether its arq job key exists."""
    out = []
    for queue in await queues(redis):
        for member, score in await redis.zrange(queue, 0, -1, withscores=True):
            if member.decode().startswith(run_id + ":"):
                late = (time.time() * 1000 - score) / 1000
                job = await redis.exists(keys.job(member.decode()))
                out.append(f"{member.decode()} (due {late:+.1f} s ago, job key {'present' if job else 'missing'})")
    return out


async def global_leftovers(redis: RedisClient, stranded: Collection[str]) -> list[str]:
    """Once every run ended: no job queued, no timer, no wait, no active run. What the runs in
    ``stranded`` (that never ended) hold is theirs, and reported with them."""

    def others(members: list[str]) -> list[str]:
        return [m for m in members if not any(m.startswith(r) or f"|{r}|" in m for r in stranded)]

    problems = []
    for queue in await queues(redis):
        members = others([m.decode() for m in await redis.zrange(queue, 0, -1)])
        if members:
            problems.append(f"{queue.decode()} holds {len(members)} jobs: {members[:5]}")
    job_keys = [k.decode() async for k in redis.scan_iter(match=keys.ARQ_JOB + "*")]
    arq_jobs = others([k.partition("}:")[2] for k in job_keys])
    if arq_jobs:
        problems.append(f"{len(arq_jobs)} arq job keys remain: {arq_jobs[:5]}")
    for shard in shards.shards():
        problems += await _shard_leftovers(redis, shard, others)
    return problems


async def _shard_leftovers(redis: RedisClient, shard: int, others: Callable[[list[str]], list[str]]) -> list[str]:
    """What one shard still holds of ended runs: timers, waits, concurrency slots, active runs,
    outbox messages."""
    problems = []
    if timers := others([t.decode() for t in await redis.zrange(keys.timers(shard), 0, -1)]):
        problems.append(f"{keys.timers(shard)} holds {timers[:5]}")
    async for key in redis.scan_iter(match=keys.waits(shard, "*")):
        members = others([m.decode() for m in await redis.hkeys(key)])  # type: ignore[misc]
        if members:
            problems.append(f"{key.decode()} still holds waits of ended runs: {members[:5]}")
    for pattern in (keys.wait_scan(shard, "*"), keys.wait_index(shard, "*", "*", "*")):
        async for key in redis.scan_iter(match=pattern):
            members = others([m.decode() for m in await redis.smembers(key)])  # type: ignore[misc]
            if members:
                problems.append(f"{key.decode()} still indexes waits of ended runs: {members[:5]}")
    # concurrency limits: no slot held, no job waiting in a lane, no lane waiting for a slot
    for pattern in (keys.slots(shard, "*"), keys.lane(shard, "*"), keys.slot_waiters(shard, "*")):
        async for key in redis.scan_iter(match=pattern):
            members = others([m.decode() for m in await redis.zrange(key, 0, -1)])
            if members and pattern != keys.slot_waiters(shard, "*"):
                problems.append(f"{key.decode()} still holds {members[:5]}")
            elif members:
                problems.append(f"{key.decode()} still lists lanes waiting: {members[:5]}")
    active = others([a.decode() for a in await redis.zrange(keys.runs_active(shard), 0, -1)])
    if active:
        problems.append(f"{keys.runs_active(shard)} lists runs that ended or are unknown: {active[:5]}")
    # every crossing to another shard was delivered and acknowledged (runtime/outbox.py)
    if undelivered := [m.decode() for m in await redis.zrange(keys.outbox(shard), 0, -1)]:
        problems.append(f"{keys.outbox(shard)} holds undelivered messages: {undelivered[:5]}")
    return problems


def diagnose(
    raw: dict[str, str],
    names: dict[str, str],
    pending: list[str],
    stack: list[str],
    jobs: list[str],
    logs: str,
    stuck_children: bool,
    missing_children: bool,
) -> str:
    """The likeliest reason a run is stuck, from what it left (a guess to sort failures by).

    ``raw``: its record; ``names``: step key -> name; ``pending``, ``stack``: step names;
    ``jobs``: its queued jobs; ``logs``: the workers' lines about it; ``stuck_children``: whether an
    invoked child of it never ended either; ``missing_children``: whether one it waits for never started.
    """
    if pending and "refused:fenced" in logs:
        return "a parallel step's result was refused as fenced, so the step stays pending"
    if "sleep_key" in raw and not names.get(raw["sleep_key"], "s").startswith("s"):
        step = names.get(raw["sleep_key"], raw["sleep_key"]) or "(the function itself)"
        return f"a retry scheduled by a sleep's wake-up job took the sleep's place (its timer now names {step})"
    if "timer" in raw and names.get(raw.get("sleep_key", ""), "?") in stack:
        step = names[raw["sleep_key"]]
        return f"its timer waits for sleep {step}, which is already done (a retry scheduled by its wake-up job?)"
    if stuck_children:
        return "it waits for an invoked child that never ended"
    if missing_children:
        return "it waits for an invoked child that was never created"
    if not pending and not jobs and "timer" not in raw and "next_job" in raw and "refused:fenced" in logs:
        return "its next job vanished after a write was refused as fenced (ended by a worker that had lost it?)"
    if not pending and not jobs and "timer" not in raw and stack and stack[-1].startswith("s"):
        return "the step after a sleep was lost (its wake-up job ran again and found the sleep done: stale)"
    if not pending and not jobs and "timer" not in raw:
        return "nothing is queued, pending or sleeping for it"
    return "cause unknown"
