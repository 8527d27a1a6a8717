"""Watching the movers of a sharded queue, so that a shard whose mover died is taken over in seconds.

Each shard of a queue has one mover: the worker that keeps a timer at the shard's earliest delayed
job (a retry, a sleep's end, the lapsed lease of a job whose worker died; runtime/job_queue.py). A
live mover claims at its wake time. A mover killed with SIGKILL claims nothing, and on a Redis
Cluster an idle worker checks each of the 32 shards only every 32 x ``STEPQ_IDLE_CHECK`` (128 s), to
keep its cost near one command per second. So the movers also publish their wake times in one small
key, ``keys.mover_watch`` (a zset: shard number -> wake time in ms, in the registry's slot), and every
worker reads it whole with one command per ``period_s``:

- a shard whose published wake time passed more than ``MOVER_GRACE_MS`` ago has a mover that did not
  wake: the worker claims there (``on_overdue``); the claim runs the due jobs and takes the mover's
  role over (claim_jobs.lua), and the worker publishes its own wake time for the shard;
- a mover publishes only when its wake time for a shard changes (a claim of its, never the warm
  path that hands a run's next job to its worker), coalesced into one write;
- the key is only a hint; each shard's mover and wake-time keys stay the truth. Stale or lost, it
  costs at most a claim for nothing or a later take-over: a watch claim that finds the shard's
  mover alive writes the shard's true wake time; a mover whose entry is missing (Redis restarted,
  a failover lost the write) publishes it again at its next read; and every shard is still checked
  by the idle rotation.

On a single Redis (one shard) there is nothing to watch: the worker's idle check visits the shard
every ``STEPQ_IDLE_CHECK``, and no watch is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection

import structlog

from stepq.runtime import keys
from stepq.runtime.connection import RedisClient
from stepq.runtime.job_queue import MOVER_GRACE_MS, Claim
from stepq.runtime.redis_errors import error_kind

from .faults import REDIS_TROUBLE, Faults

log = structlog.get_logger("stepq.worker")


class MoverWatch:
    """One worker's part in watching the movers of ``queue_id``'s shards (see the module docstring)."""

    def __init__(
        self,
        redis: RedisClient,
        queue_id: str,
        shards: Collection[int],
        *,
        period_s: float,
        on_overdue: Callable[[list[int]], None],
    ) -> None:
        self.redis = redis
        self.key = keys.mover_watch(queue_id)
        self.shards = frozenset(shards)
        self.period_s = period_s
        #: Called with the served shards whose mover did not wake (the worker claims there).
        self.on_overdue = on_overdue
        #: What the hint holds, as this worker last read or wrote it (shard -> wake ms).
        self._hint: dict[int, int] = {}
        #: Writes not yet made (shard -> wake ms, None: remove the shard's entry).
        self._pending: dict[int, int | None] = {}
        #: The shards this worker is the mover of, with its wake time for each (None: none).
        self._mine: dict[int, int | None] = {}
        self._flush = asyncio.Event()

    def _known(self, shard: int) -> int | None:
        return self._pending[shard] if shard in self._pending else self._hint.get(shard)

    def _publish(self, shard: int, wake_ms: int | None) -> None:
        self._pending[shard] = wake_ms
        self._flush.set()

    def claimed(self, shard: int, claim: Claim, *, watched: bool) -> None:
        """After a claim on ``shard`` (``watched``: made because the hint said its mover was overdue):
        publish the shard's wake time if this worker is its mover and the time changed; after a
        watched claim that found another mover, publish that mover's time (the hint was stale)."""
        if claim.mover:
            self._mine[shard] = claim.wake_at_ms
            if self._known(shard) != claim.wake_at_ms:
                self._publish(shard, claim.wake_at_ms)
            return
        self._mine.pop(shard, None)
        if watched and self._known(shard) != claim.mover_wake_ms:
            self._publish(shard, claim.mover_wake_ms)

    async def run(self, reachable: Callable[[], bool]) -> None:
        """Read the hint every ``period_s`` and write what changed as it changes (a background task)."""
        writer = asyncio.create_task(self._write(reachable), name="stepq-mover-hint")
        faults = Faults("mover-watch")
        try:
            while True:
                if reachable():
                    try:
                        await self.check()
                    except REDIS_TROUBLE as exc:
                        faults.failed(exc)
                        if error_kind(exc) == "WRONGTYPE":
                            await self._reset()
                    else:
                        if faults.failing:
                            faults.succeeded()
                await asyncio.sleep(self.period_s)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def check(self) -> list[int]:
        """Read the hint once: claim (``on_overdue``) where a mover is overdue, publish again this
        worker's wake times that the hint lost. Returns the overdue shards."""
        entries = await self.redis.zrange(self.key, 0, -1, withscores=True)
        hint: dict[int, int] = {}
        for member, score in entries:
            with contextlib.suppress(ValueError):
                hint[int(member)] = int(score)
        self._hint = hint
        due_before = time.time() * 1000 - MOVER_GRACE_MS
        overdue = [shard for shard, wake in hint.items() if shard in self.shards and wake < due_before]
        if overdue:
            self.on_overdue(overdue)
        for shard, wake in self._mine.items():
            if wake is not None and shard not in hint and shard not in self._pending:
                self._publish(shard, wake)  # lost (Redis restarted empty, a failover lost it)
        return overdue

    async def _write(self, reachable: Callable[[], bool]) -> None:
        faults = Faults("mover-hint")
        while True:
            await self._flush.wait()
            self._flush.clear()
            if not self._pending:
                continue
            if not reachable():
                await asyncio.sleep(1.0)
                self._flush.set()
                continue
            writes, self._pending = self._pending, {}
            # what the hint holds once written: a claim meanwhile compares with it, not the old value
            for shard, wake in writes.items():
                if wake is None:
                    self._hint.pop(shard, None)
                else:
                    self._hint[shard] = wake
            added = {str(shard): wake for shard, wake in writes.items() if wake is not None}
            removed = [str(shard) for shard, wake in writes.items() if wake is None]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    if added:
                        pipe.zadd(self.key, added)
                    if removed:
                        pipe.zrem(self.key, *removed)
                    await pipe.execute()
            except REDIS_TROUBLE as exc:
                # write them later, unless a newer value came meanwhile
                self._pending = {**writes, **self._pending}
                await asyncio.sleep(faults.failed(exc))
                self._flush.set()
                continue
            if faults.failing:
                faults.succeeded()

    async def _reset(self) -> None:
        """The hint's key holds another type: delete it (it is rebuilt from the movers' next writes)."""
        with contextlib.suppress(*REDIS_TROUBLE):
            await self.redis.delete(self.key)
            log.error("mover_watch.reset", key=self.key, detail="it held the wrong type")
