"""The Redis event transport behind ``stepq.Client.send`` (found through the ``stepq.transports`` entry point)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlparse

from stepq.errors import StepqError
from stepq.event import Event
from stepq.tracing import current_traceparent

from . import lifecycle, store
from .connection import open_redis
from .ingest import Ingest
from .limits import Limits
from .redis_errors import ANY, unavailable_reason
from .registry import Registry
from .store import RunStore


class SendError(StepqError):
    """Events could not be sent: Redis did not answer, or could not take the write (out of memory,
    read-only, loading...). A batch is stored whole or not at all, and each function starts at most
    once per event id, so sending the same events again is safe."""


class RedisTransport:
    """Sends events straight into Redis: stores them and starts their runs."""

    def __init__(self, url: str, limits: Limits | None = None) -> None:
        self.url = url
        self.limits = limits or Limits.from_env()
        self._ingest: Ingest | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_ingest: Ingest | None = None
        self._sync_lock = threading.Lock()
        #: The ingest came from ``share``: another owner closes its client.
        self._shared = False

    def share(self, ingest: Ingest) -> None:
        """Send through ``ingest`` (an open client to this transport's Redis, of this loop) instead
        of opening one at the first send. A worker shares its own: on a Redis Cluster, a client
        opened later from the one node the URL names fails for as long as that node is down (a
        master that failed over), while the worker's client follows the cluster to the other nodes."""
        if self._ingest is None:
            self._ingest, self._shared = ingest, True

    async def _make_ingest(self) -> Ingest:
        redis = await open_redis(self.url)  # a cluster, or one Redis; sets the shard count
        store = RunStore(redis, self.limits)
        return Ingest(redis, store, Registry(redis, store.scripts))

    async def _opened(self) -> Ingest:
        """The ingest of this transport's loop (``send``), opened at first use."""
        if self._ingest is None:
            ingest = await self._make_ingest()
            if self._ingest is None:
                self._ingest = ingest
            else:  # a concurrent send opened one first
                await ingest.redis.aclose()
        return self._ingest

    async def _sync_opened(self) -> Ingest:
        """The ingest of ``send_sync``'s private loop, opened at first use."""
        if self._sync_ingest is None:
            self._sync_ingest = await self._make_ingest()
        return self._sync_ingest

    async def send(self, events: Sequence[Event]) -> list[str]:
        return await _send(self._opened, events, self.url, current_traceparent())

    def send_sync(self, events: Sequence[Event]) -> list[str]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise StepqError("send_sync was called inside a running event loop; use `await client.send(...)`")
        with self._sync_lock:
            if self._sync_loop is None:
                self._sync_loop = asyncio.new_event_loop()
            return self._sync_loop.run_until_complete(_send(self._sync_opened, events, self.url, current_traceparent()))

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel a run; False when it had already ended (or does not exist)."""
        outcome = await lifecycle.cancel(await self._opened(), run_id, reason)
        return outcome is store.Outcome.OK

    async def aclose(self) -> None:
        if self._ingest is not None and not self._shared:
            await self._ingest.redis.aclose()
        self._ingest, self._shared = None, False


async def _send(
    opened: Callable[[], Awaitable[Ingest]], events: Sequence[Event], url: str, traceparent: str
) -> list[str]:
    try:
        ingest = await opened()  # opening Redis can fail as a send does
        return await ingest.send(events, traceparent=traceparent)
    except ANY as exc:
        reason = unavailable_reason(exc)
        if reason is None:
            raise
        # The reason, not the error's text: a failed command's text can quote the events' data.
        raise SendError(
            f"could not send {len(events)} event(s): Redis at {_redact(url)} {reason} ({type(exc).__name__}); "
            "retry later (a batch is stored whole or not at all)"
        ) from None


def _redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
