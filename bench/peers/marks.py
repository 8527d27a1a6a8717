"""How every system's benchmark workflow reports what it measured: one RPUSH at the end of a run.

Each step of every system is a no-op returning ``time.time()`` through the system's own step
primitive (so the timestamp is a durable step result wherever the system has durable steps). When
the run ends it pushes one JSON record to the marks database, a private redis-server of the
benchmark's own: the step timestamps, the end time and the ``sent`` time its input carried.

This module runs in stepq's venv and in the peers' venv (another redis-py): stdlib and redis only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from bench.peers.env import MARKS_ENV

_sync: redis.Redis | None = None
_async: redis.asyncio.Redis | None = None


def now() -> float:
    """The no-op step body of every system: the time it ran."""
    return time.time()


def record(data: dict[str, Any], steps: Sequence[float]) -> str:
    """The JSON a finished run pushes: its step timestamps, its end, the send time from its input."""
    return json.dumps({"steps": list(steps), "end": time.time(), "sent": data.get("sent")})


def _url() -> str:
    url = os.environ.get(MARKS_ENV)
    if not url:
        raise RuntimeError(f"{MARKS_ENV} is not set: the benchmark workflows need a database for their marks")
    return url


def push(data: dict[str, Any], steps: Sequence[float]) -> None:
    """Record a finished run (blocking clients: Celery tasks, DBOS workflows)."""
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(_url())
    _sync.rpush(str(data["key"]), record(data, steps))


async def apush(data: dict[str, Any], steps: Sequence[float]) -> None:
    """Record a finished run (asyncio: stepq, Restate, arq)."""
    global _async
    if _async is None:
        _async = redis.asyncio.Redis.from_url(_url())
    await _async.rpush(str(data["key"]), record(data, steps))  # type: ignore[misc]
