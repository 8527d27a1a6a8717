"""What a worker's liveness and readiness probes answer (served by ``stepq.workers.endpoint``).

The worker's event loop updates a heartbeat once a second (``beat``, a task the ``stepq worker``
command starts on the loop before it builds the worker, which may wait for Redis a long time); the
probes are answered from the endpoint's thread, which never waits on the loop, so a loop stuck in
blocking code shows as a heartbeat growing old:

- live: the heartbeat is younger than ``liveness_timeout_s`` (``STEPQ_LIVENESS_TIMEOUT``). A draining
  worker is still alive: it is finishing its steps.
- ready: this worker has started (registered its app's functions, or, serving functions over HTTP,
  reached Redis), its watchdog sees Redis reachable, and it is not draining. Otherwise not ready,
  with the reason.

The fields are written by the loop and read by the endpoint's thread: each is one attribute (a
bool, a float), which a thread reads whole.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Any

#: How often the event loop updates its heartbeat.
BEAT_S = 1.0


class NotReady(enum.StrEnum):
    """Why a worker is not ready (the ``reason`` of ``/readyz``'s 503 answer)."""

    STARTING = "starting"
    REDIS_UNREACHABLE = "redis_unreachable"
    DRAINING = "draining"


_DETAILS = {
    NotReady.STARTING: "the worker has not yet reached Redis and registered its app's functions",
    NotReady.REDIS_UNREACHABLE: "the worker's watchdog gets no answer from Redis; it claims no jobs meanwhile",
    NotReady.DRAINING: "the worker got SIGTERM: it takes no new jobs and lets running steps finish",
}


class Health:
    """One worker's liveness and readiness (see the module docstring)."""

    def __init__(self, liveness_timeout_s: float) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        #: Whether the worker's watchdog sees Redis reachable (``watch``).
        self._redis_reachable: Callable[[], bool] = lambda: False
        #: time.monotonic() of the event loop's last beat (fresh at creation: the loop starts soon).
        self.heartbeat = time.monotonic()
        #: Set once the worker registered its app (or reached Redis, serving functions over HTTP).
        self.started = False
        #: Set on SIGTERM/SIGINT (or ``StepqWorker.stop``).
        self.draining = False

    def watch(self, redis_reachable: Callable[[], bool]) -> None:
        """Take Redis's reachability from ``redis_reachable`` (the worker's watchdog)."""
        self._redis_reachable = redis_reachable

    async def beat(self) -> None:
        """Update the heartbeat forever (a background task of the worker's event loop)."""
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(BEAT_S)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the event loop beat recently, and the answer's body."""
        age = round(time.monotonic() - self.heartbeat, 3)
        if age <= self.liveness_timeout_s:
            return True, {"live": True, "heartbeat_age_s": age}
        return False, {"live": False, "heartbeat_age_s": age, "timeout_s": self.liveness_timeout_s}

    def not_ready(self) -> NotReady | None:
        """Why the worker is not ready, or None when it is."""
        if self.draining:
            return NotReady.DRAINING
        if not self.started:
            return NotReady.STARTING
        if not self._redis_reachable():
            return NotReady.REDIS_UNREACHABLE
        return None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the worker is ready, and the answer's body."""
        reason = self.not_ready()
        if reason is None:
            return True, {"ready": True}
        return False, {"ready": False, "reason": reason.value, "detail": _DETAILS[reason]}
