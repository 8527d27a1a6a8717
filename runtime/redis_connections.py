"""The connection classes stepq gives redis-py, for two states of a connection redis-py 5 mistakes.

- ``READONLY`` from the server: it is a replica now (a failover moved the master elsewhere, while a
  DNS name or a proxy still points here or did when the connection was made). The connection drops
  itself and raises ``ReplicaNowError``, a lost connection, which redis-py's retries and the
  workers' loops ride out (reconnecting, to the new master once the name leads there).
- A connection closed before its command is written. redis-py 5 writes to ``self._writer`` without
  looking, so a connection closed while its command waited raises ``AttributeError`` (the writer is
  gone) or, on CPython 3.12+, ``TypeError`` (the transport half torn down after the peer reset it:
  redis-py issue #4287), which no retry policy or worker recognizes. Both happen: a cluster client
  closes every connection of every node when one command meets a lost connection, including those
  other tasks are just opening, and a managed Redis resets idle connections. The command was not
  sent, so the connection opens again and sends it. redis-py 8.1 fixed this (PR #4288); arq pins
  redis-py below 6, so the guard lives here.

A cluster node's connections (``ClusterConnection``) also note since when they wait for a reply,
for the workers' watch on a master that froze (workers/watchdog.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

from .redis_errors import ReplicaNowError

#: How many times a command's connection is opened again after another task closed it.
_REOPENS = 2


class _GuardedWrites(AbstractConnection):
    """A connection closed before its command was written opens again, or fails as a lost one."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        # Opening a connection (or checking its health) may suspend, and another task may close it
        # meanwhile: then open it again. The command was not sent, so sending it now is safe. From
        # the last look to redis-py's own write nothing suspends.
        for _ in range(1 + _REOPENS):
            if not self.is_connected:
                await self.connect()  # type: ignore[no-untyped-call]
            elif check_health:
                await self.check_health()  # type: ignore[no-untyped-call]
            if self._writable():
                await super().send_packed_command(command, check_health=False)
                return
            await self.disconnect(nowait=True)  # (if the peer reset it: the transport is half gone)
        raise RedisConnectionError(f"Connection to {self._host_error()} closed before a command was sent")

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        # redis-py's write under a socket timeout runs in a task of its own (asyncio.wait_for on
        # 3.11): the connection may close between the task's creation and its first step.
        if not self._writable():
            raise RedisConnectionError(f"Connection to {self._host_error()} closed before a command was sent")
        await super()._send_packed_command(command)

    def _writable(self) -> bool:
        writer = self._writer
        return writer is not None and not writer.transport.is_closing()


class _ReconnectOnReadOnly(AbstractConnection):
    """``READONLY`` drops the connection and fails as a lost connection."""

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        try:
            return await super().read_response(
                disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        except ReadOnlyError as exc:
            await self.disconnect(nowait=True)
            raise ReplicaNowError(f"{self._host_error()} is a read-only replica now (a failover?)") from exc


class FailoverConnection(_GuardedWrites, _ReconnectOnReadOnly, Connection):
    """A TCP connection (to one Redis, or to a node of a cluster) that reads ``READONLY`` and a closed
    connection as a lost connection."""


class FailoverSSLConnection(_GuardedWrites, _ReconnectOnReadOnly, SSLConnection):
    """``FailoverConnection`` over TLS."""


class FailoverUnixConnection(_GuardedWrites, _ReconnectOnReadOnly, UnixDomainSocketConnection):
    """``FailoverConnection`` over a unix socket."""


class FailoverSentinelConnection(_GuardedWrites, SentinelManagedConnection):
    """A connection to the master Sentinel names (redis-py's own reads ``READONLY`` as a lost
    connection, and reconnects to whichever server Sentinel names then)."""


class FailoverSentinelSSLConnection(_GuardedWrites, SentinelManagedSSLConnection):
    """``FailoverSentinelConnection`` over TLS."""


#: Commands whose reply comes when data does or their own timeout ends: a reply they wait for long
#: says nothing about the server.
_BLOCKING = (b"BLPOP", b"BRPOP", b"BLMOVE", b"BZPOPMIN", b"BZPOPMAX", b"XREAD", b"WAIT")


class _RepliesWatched(AbstractConnection):
    """Says since when it waits for a reply (``awaiting_since``), for a watch on nodes that stopped
    answering without closing anything (a frozen machine: its kernel still acknowledges the bytes,
    so neither TCP nor a refused connection ends the wait; workers/watchdog.py)."""

    #: When the read of the pending reply began (``time.monotonic``); None when no read waits, or the
    #: command blocks by design (``BLPOP``...).
    awaiting_since: float | None = None
    _blocking = False

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        if not isinstance(command, bytes | str):
            command = list(command)  # (a list already, from redis-py's packing)
        first = command if isinstance(command, bytes | str) else (command[0] if command else b"")
        head = (first.encode() if isinstance(first, str) else first)[:24].upper()
        self._blocking = any(name in head for name in _BLOCKING)
        await super().send_packed_command(command, check_health)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        if not self._blocking:
            self.awaiting_since = time.monotonic()
        try:
            return await super().read_response(
                disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        finally:
            self.awaiting_since = None


class ClusterConnection(_RepliesWatched, FailoverConnection):
    """A connection to a cluster node: ``FailoverConnection``, watched for replies that never come."""


class ClusterSSLConnection(_RepliesWatched, FailoverSSLConnection):
    """``ClusterConnection`` over TLS."""


#: The class stepq uses in place of each of redis-py's for one Redis.
FAILOVER_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: FailoverConnection,
    SSLConnection: FailoverSSLConnection,
    UnixDomainSocketConnection: FailoverUnixConnection,
}


def for_cluster(connection_class: type[Connection]) -> type[Connection]:
    """The class stepq uses for a cluster node's connections, in place of redis-py's
    ``connection_class`` (TCP or TLS; stepq's own given back unchanged)."""
    return ClusterSSLConnection if issubclass(connection_class, SSLConnection) else ClusterConnection


def awaited_since(connection: object) -> float | None:
    """Since when ``connection`` (a cluster node's) waits for a reply that is no blocking command's."""
    return getattr(connection, "awaiting_since", None)
