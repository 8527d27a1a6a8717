"""Redis trouble in a worker's loops: log each kind once per outage, back off (bounded), go on.

A worker's loops (poll, claim, leases, timers, cron, registration) must outlive any Redis error:
a lost connection, but also replies such as ``OOM`` (``maxmemory`` with ``noeviction``),
``READONLY`` (a failover), ``WRONGTYPE``, ``BUSY`` (a long script) or a script error. Each loop
keeps a ``Faults``: the first error of a kind is logged, repeats are not until the loop succeeds
again (then one ``redis.recovered`` line), and the loop waits a little longer after each failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from stepq.runtime.redis_errors import ANY, UNREACHABLE, ReplicaNowError, error_kind

log = structlog.get_logger("stepq.worker")

#: Errors that mean Redis did not answer (as opposed to answering with an error).
REDIS_DOWN = UNREACHABLE
#: Every error a worker's loop survives: Redis's replies and the network's failures.
REDIS_TROUBLE = ANY
#: First and longest wait between attempts.
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


class Faults:
    """One activity's run of Redis errors (see the module docstring)."""

    def __init__(self, activity: str, *, first_s: float = FIRST_DELAY_S, cap_s: float = MAX_DELAY_S) -> None:
        self.activity = activity
        self.first_s = first_s
        self.cap_s = cap_s
        self.delay_s = 0.0
        self._kinds: set[str] = set()
        self._since = 0.0

    @property
    def failing(self) -> bool:
        return bool(self._kinds)

    def failed(self, exc: BaseException, **fields: object) -> float:
        """Record a failure; log it if its kind is new in this run of failures. Returns the wait."""
        self.delay_s = min(max(self.delay_s * 2, self.first_s), self.cap_s)
        kind = error_kind(exc)
        if not self._kinds:
            self._since = time.monotonic()
        if kind not in self._kinds:
            self._kinds.add(kind)
            # READONLY is an answer, though the connection that got it drops itself as if lost
            answered = not isinstance(exc, REDIS_DOWN) or isinstance(exc, ReplicaNowError)
            event = "redis.error" if answered else "redis.unavailable"
            log.warning(event, activity=self.activity, kind=kind, error=str(exc), retry_in_s=self.delay_s, **fields)
        return self.delay_s

    def succeeded(self) -> None:
        """The activity worked again: say so once, and start the backoff afresh."""
        if self._kinds:
            log.info(
                "redis.recovered",
                activity=self.activity,
                kinds=sorted(self._kinds),
                after_s=round(time.monotonic() - self._since, 3),
            )
            self._kinds.clear()
        self.delay_s = 0.0


R = TypeVar("R")


async def until_redis_answers(action: Callable[[], Awaitable[R]], activity: str = "startup") -> R:
    """Run ``action`` until it succeeds, backing off (up to 5 s apart) while Redis fails it, whatever
    the error: down, read-only, out of memory, busy."""
    faults = Faults(activity)
    while True:
        try:
            result = await action()
        except REDIS_TROUBLE as exc:
            await asyncio.sleep(faults.failed(exc))
        else:
            faults.succeeded()
            return result
