"""Background chores a worker does for each shard in turn (the timers and outbox sweeps).

A chore that must visit every shard (each holds its own keys: one script, one slot) would cost an
idle worker one command per shard per period if it visited them all at once: 32 a period on a Redis
Cluster. ``ShardChore`` visits one shard at a time, round robin from a random shard (so that the
workers of a fleet start apart), every ``period_s / len(shards)`` but never more often than
``min_gap_s``: on one Redis (one shard) it runs every ``period_s``; with many shards the fleet
shares the visits.

Most visits cost nothing: a worker's claims look for the chores' work too (claim_jobs.lua's chores
check, at most once per shard per ``CLAIM_CHECK_S``; an idle worker's idle checks are claims), and
``checked`` records it. A visit is made only to a shard no claim looked at since the chore's last
turn there, as when a worker is too busy to claim from it; where a claim found work, ``visit`` does
it at once. So an idle worker's chores cost Redis no command of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from .faults import REDIS_TROUBLE, Faults

log = structlog.get_logger("stepq.worker")

#: A worker visits shards for one chore at most this often.
MIN_GAP_S = 10.0
#: A worker's claims from a shard look for its chores' work at most this often.
CLAIM_CHECK_S = 10.0


@dataclasses.dataclass(slots=True)
class ShardChore:
    """``action(shard)``, for each served shard in turn (see the module docstring)."""

    name: str
    period_s: float
    action: Callable[[int], Awaitable[Any]]
    min_gap_s: float = MIN_GAP_S
    #: When a claim (or a visit) last looked at each shard for this chore's work (monotonic s).
    _checked: dict[int, float] = dataclasses.field(default_factory=dict, init=False)
    _faults: Faults = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self._faults = Faults(self.name)

    def gap_s(self, shard_count: int) -> float:
        """The pause between two visits (to two shards, or to the only one)."""
        return max(self.period_s / max(shard_count, 1), min(self.min_gap_s, self.period_s))

    def checked(self, shard: int) -> None:
        """A claim looked at ``shard`` for this chore's work (and found none, or ``visit`` does it)."""
        self._checked[shard] = time.monotonic()

    async def visit(self, shard: int) -> None:
        """Do the chore for ``shard`` now: a Redis error is logged once (until a visit succeeds),
        any other error with its traceback."""
        faults = self._faults
        self.checked(shard)
        try:
            await self.action(shard)
        except REDIS_TROUBLE as exc:
            faults.failed(exc, shard=shard)
        except Exception:
            log.exception("chore.crashed", chore=self.name, shard=shard)
        else:
            faults.succeeded()

    async def run(self, shards: Sequence[int], reachable: Callable[[], bool]) -> None:
        """Visit ``shards`` forever (a background task), skipping a shard a claim looked at since
        this chore's last turn there."""
        gap = self.gap_s(len(shards))
        turn = random.randrange(len(shards)) if shards else 0
        while True:
            await asyncio.sleep(gap)
            if not shards or not reachable():
                continue
            shard = shards[turn % len(shards)]
            turn += 1
            last = self._checked.get(shard)
            if last is not None and time.monotonic() - last < gap * len(shards):
                continue
            await self.visit(shard)
