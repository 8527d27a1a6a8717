"""What a Redis error means: Redis unreachable, a state it comes out of by itself, or something wrong
with the data or the code.

- *Unreachable*: the connection failed or timed out.
- *Passing*: Redis answered that it cannot do it now: out of memory under ``noeviction``, a replica
  during a failover (``READONLY``), a long script (``BUSY``), an AOF still loading, a primary down,
  a cluster resharding, an RDB save failure that blocks writes (``MISCONF``). Work waits and tries
  again, for as long as it lasts.
- Anything else (``WRONGTYPE``, a script error) is lasting: retried a few times, then reported.
"""

from __future__ import annotations

import re

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    ExecAbortError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Errors that mean Redis did not answer (as opposed to answering with an error).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
#: Every error Redis (or the network to it) can raise.
ANY = (RedisError, OSError)

#: Error codes of the passing states (see the module docstring).
PASSING_KINDS = frozenset(
    {"OOM", "READONLY", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS", "MISCONF"}
)

# redis-py strips the code from the errors it maps to a class of its own.
_CODES: dict[type[ResponseError], str] = {
    OutOfMemoryError: "OOM",
    ReadOnlyError: "READONLY",
    NoScriptError: "NOSCRIPT",
    ExecAbortError: "EXECABORT",
}
# A pipeline's error quotes the reply it failed on: "Command # 1 (...) of pipeline caused error: ('BUSY ...',)".
_PIPELINE_REPLY = re.compile(r"of pipeline caused error: \(['\"]([A-Z]+) ")


def error_kind(exc: BaseException) -> str:
    """``OOM``, ``READONLY``, ``WRONGTYPE``, ``BUSY``... for a Redis error reply, else the class name."""
    if isinstance(exc, ResponseError):
        for cls, code in _CODES.items():
            if isinstance(exc, cls):
                return code
        text = str(exc)
        quoted = _PIPELINE_REPLY.search(text)
        word = quoted.group(1) if quoted else text.split(" ", 1)[0]
        return word if word.isupper() and word.isalpha() else "ERR"
    return type(exc).__name__


def is_passing(exc: BaseException) -> bool:
    """True when waiting cures the error: Redis unreachable, or in one of the passing states."""
    if isinstance(exc, UNREACHABLE):
        return True
    return isinstance(exc, ResponseError) and error_kind(exc) in PASSING_KINDS
