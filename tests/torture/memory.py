"""Redis memory before the runs and after their retention: the runs must leave nothing behind.

The census counts keys by kind (the test's own ``torture:`` keys apart) and the sizes of the run and
event indexes, and reads the dataset's memory: Redis's used memory less its overhead (client
buffers, cached scripts, the AOF buffer), which depends on the connections the fleet holds at the
moment rather than on the runs. Redis's own diagnostics are reset first: the slow log keeps copies of
slow commands' arguments, and every command gets a latency histogram (tens of KiB) on first use.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from stepq.runtime import keys

#: What may remain of the runs after their retention: the probe run that trims the indexes holds a
#: few keys, and some bookkeeping is per event name (bounded by the names in use), not per run.
ALLOWED_KEYS = {
    "run keys": 5,
    "stepq:event": 1,
    "stepq:recent": 2,
    "stepq:waitpaths": 8,
    # the events index, and the probe's name's; the probe event's outcomes
    "stepq:events": 2,
    "stepq:outcomes": 1,
    # the done runs; the probe's entries in the run lists' indexes (runtime/lua/run_index.lua): by
    # event name, by status, by function and status, recent ends, expiry
    "stepq:runs": 6,
    # per queue, while its workers run (two queues here): the mover's lease and wake time, a token
    "queue wake-up keys": 6,
}
#: Each run keeps its 24-hour idempotency key (about 150 bytes); nothing else may stay.
IDEMPOTENCY_KEY_BYTES = 200
SLACK_BYTES = 64 * 1024
INDEXES = (keys.runs_active(0), keys.runs_done(0), keys.events_index(0), keys.timers(0))


@dataclasses.dataclass(slots=True)
class Census:
    dataset: int
    used: int
    kinds: Counter[str]
    #: Bytes of each kind (MEMORY USAGE), when asked for.
    usage: Counter[str]
    indexes: dict[str, int]


def _kind(key: str) -> str:
    """What a key is, by its name without the shard's hash tag: ``stepq:queue``, ``run keys``..."""
    plain = re.sub(r"\{[^}]*\}:", "", key, count=1)
    kind = ":".join(plain.split(":")[:2])
    if kind.removeprefix(f"{keys.PREFIX}:") in keys.RUN_SHAPES:
        return "run keys"
    if kind.removeprefix(f"{keys.PREFIX}:") in ("ready", "mover", "wake_at"):
        return "queue wake-up keys"
    return kind


async def census(redis: Redis, *, sizes_of_keys: bool = False) -> Census:
    kinds: Counter[str] = Counter()
    usage: Counter[str] = Counter()
    async for key in redis.scan_iter(count=1000):
        text = key.decode()
        kind = _kind(text)
        if text.startswith("torture:"):
            kind = "(the test's torture: keys)"
        else:
            kinds[kind] += 1
        if sizes_of_keys:
            usage[kind] += int(await redis.memory_usage(key) or 0)
    await redis.slowlog_reset()
    await redis.config_resetstat()
    indexes = {index: int(await redis.zcard(index)) for index in INDEXES}
    info: dict[str, Any] = await redis.info("memory")
    return Census(int(info["used_memory_dataset"]), int(info["used_memory"]), kinds, usage, indexes)


def verdict(baseline: Census, after: Census, runs: int) -> tuple[str, list[str]]:
    """A one-line summary, and the problems: keys or index entries left, memory not back near the baseline.

    What the keys take (MEMORY USAGE of every key, both readings) is compared, not Redis's dataset
    figure: that one moved by 70-140 KiB between readings of the same idle server in short runs
    (allocator and lazy-free timing), more than the leaks this check is for."""
    grew = sum(after.usage.values()) - sum(baseline.usage.values())
    kinds = after.kinds - baseline.kinds
    dedupe = kinds.pop("stepq:dedupe", 0)  # an event id is an idempotency key for 24 h, by design
    summary = (
        f"Redis dataset {baseline.dataset / 1024:.0f} KiB before the runs, {after.dataset / 1024:.0f} KiB after "
        f"their retention (keys {grew / 1024:+.0f} KiB, with {dedupe} idempotency keys that live 24 h; used_memory "
        f"{baseline.used / 1024:.0f} -> {after.used / 1024:.0f} KiB)"
    )
    problems = []
    leftover = {k: n for k, n in kinds.items() if n > ALLOWED_KEYS.get(k, 0)}
    if leftover:
        problems.append(f"keys left after the retention: {leftover}")
    for index, size in after.indexes.items():
        if size > 1:
            problems.append(f"{index} still lists {size} entries after the retention")
    allowed = SLACK_BYTES + IDEMPOTENCY_KEY_BYTES * runs
    if grew > allowed:
        problems.append(
            f"Redis keys grew by {grew / 1024:.0f} KiB over the baseline (allowed {allowed / 1024:.0f} KiB): "
            f"keys {dict(after.kinds)}, bytes {dict(after.usage)}"
        )
    return summary, problems
