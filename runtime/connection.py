"""Redis connections with the timeouts and reconnect policy stepq relies on."""

from __future__ import annotations

import socket
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

#: Kernel-level limits that cost nothing per command. An idle connection to a dead peer is noticed by
#: keepalive within about 5 + 3 x 2 s; a request the peer never acknowledges (link down, packets
#: dropped) fails after TCP_USER_TIMEOUT instead of the kernel's retry limit (15 retries: minutes).
#: Workers also run a watchdog (workers/watchdog.py), which catches what TCP cannot see (a proxy or
#: middlebox that acknowledges but does not forward).
_KEEPALIVE: dict[int, int] = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3}
if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
    _KEEPALIVE[socket.TCP_USER_TIMEOUT] = 10_000  # ms


def pool_options(*, hot_path: bool = False) -> dict[str, Any]:
    """Bounded timeouts and a few quick retries: a command fails clearly after a short outage
    rather than hanging; workers ride out longer ones at their own level.

    ``hot_path`` (workers): no per-read timeout and no periodic PING. Each costs redis-py an
    asyncio timeout or a clock check on every command (about a fifth of a worker's CPU per step);
    a worker relies on its watchdog (a probe with a timeout, on a connection of its own) and on the
    kernel limits above to notice a Redis that stopped answering.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "socket_keepalive_options": _KEEPALIVE,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if not hot_path:
        options["socket_timeout"] = 15
        options["health_check_interval"] = 30
    return options


def make_pool(url: str, *, max_connections: int | None = None, hot_path: bool = False) -> ConnectionPool:
    """A connection pool for ``url``; replies stay bytes (msgpack)."""
    options = pool_options(hot_path=hot_path)
    if url.startswith("unix://"):  # TCP only
        options.pop("socket_keepalive")
        options.pop("socket_keepalive_options")
    if max_connections is not None:
        options["max_connections"] = max_connections
    return ConnectionPool.from_url(url, decode_responses=False, **options)


def connect(url: str, *, max_connections: int | None = None) -> Redis:
    """An asyncio client for ``url``."""
    return Redis(connection_pool=make_pool(url, max_connections=max_connections))
