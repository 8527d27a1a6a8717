"""Which Redis errors pass by themselves (the server is full, read-only, busy, loading, failing over)
and which say something is wrong with the data or the code (a wrong type, a script error).

Both are answered without losing anything: a passing error sends the work back to wait and try again
later, for as long as it lasts; a lasting one is retried a few times, then reported where a person
will see it.
"""

from __future__ import annotations

from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Errors that mean Redis cannot be reached right now.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

#: What redis-py raises for some of them (it strips the reply's prefix from the message).
_PASSING_CLASSES = (OutOfMemoryError, ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError)
#: Reply prefixes of errors a healthy deployment goes through and comes out of by itself: out of
#: memory under ``noeviction``, a replica during a failover, a long script, an AOF still loading, a
#: primary down, a cluster resharding, a failed RDB save that blocks writes.
_PASSING_PREFIXES = (
    "OOM",
    "READONLY",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
)


def is_passing(exc: BaseException) -> bool:
    """True for an error that waiting out cures: Redis unreachable, or one of the states above."""
    if isinstance(exc, UNREACHABLE + _PASSING_CLASSES):
        return True
    if isinstance(exc, ResponseError):
        return str(exc).lstrip().upper().startswith(_PASSING_PREFIXES)
    return False
