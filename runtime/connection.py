"""Redis connections with the timeouts and reconnect policy stepq relies on."""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry


def pool_options() -> dict[str, Any]:
    """Bounded timeouts and a few quick retries: a command fails clearly after a short outage
    rather than hanging; workers ride out longer ones at their own level."""
    return {
        "socket_connect_timeout": 5,
        "socket_timeout": 15,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def make_pool(url: str, *, max_connections: int | None = None) -> ConnectionPool:
    """A connection pool for ``url``; replies stay bytes (msgpack)."""
    options = pool_options()
    if url.startswith("unix://"):
        options.pop("socket_keepalive")  # TCP only
    if max_connections is not None:
        options["max_connections"] = max_connections
    return ConnectionPool.from_url(url, decode_responses=False, **options)


def connect(url: str, *, max_connections: int | None = None) -> Redis:
    """An asyncio client for ``url``."""
    return Redis(connection_pool=make_pool(url, max_connections=max_connections))
