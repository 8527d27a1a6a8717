"""Background chores a worker does for each shard in turn (the timers sweep; others can join).

A chore that must visit every shard (each holds its own keys: one script, one slot) would cost an
idle worker one command per shard per period if it visited them all at once: 32 a period on a Redis
Cluster. ``ShardChore`` visits one shard at a time, round robin from a random shard (so that the
workers of a fleet start apart), every ``period_s / len(shards)`` but never more often than
``min_gap_s``: on one Redis (one shard) it runs every ``period_s`` as before; with many shards the
fleet shares the visits and each worker costs Redis one visit per ``min_gap_s`` at most.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from .faults import REDIS_TROUBLE, Faults

log = structlog.get_logger("stepq.worker")

#: A worker visits shards for one chore at most this often.
MIN_GAP_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class ShardChore:
    """``action(shard)``, for each served shard in turn (see the module docstring)."""

    name: str
    period_s: float
    action: Callable[[int], Awaitable[Any]]
    min_gap_s: float = MIN_GAP_S

    def gap_s(self, shard_count: int) -> float:
        """The pause between two visits (to two shards, or to the only one)."""
        return max(self.period_s / max(shard_count, 1), min(self.min_gap_s, self.period_s))

    async def run(self, shards: Sequence[int], reachable: Callable[[], bool]) -> None:
        """Visit ``shards`` forever (a background task); a Redis error is logged once and the next
        visit goes on, any other error is logged with its traceback."""
        faults = Faults(self.name)
        gap = self.gap_s(len(shards))
        turn = random.randrange(len(shards)) if shards else 0
        while True:
            await asyncio.sleep(gap)
            if not shards or not reachable():
                continue
            shard = shards[turn % len(shards)]
            turn += 1
            try:
                await self.action(shard)
            except REDIS_TROUBLE as exc:
                faults.failed(exc, shard=shard)
            except Exception:
                log.exception("chore.crashed", chore=self.name, shard=shard)
            else:
                faults.succeeded()
