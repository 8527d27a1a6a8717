"""The Redis event transport behind ``sdk.Client.send`` (found through the ``stepq.transports`` entry point)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.connection import connect
from runtime.ingest import Ingest
from runtime.limits import Limits
from runtime.registry import Registry
from runtime.store import RunStore
from sdk.errors import StepqError
from sdk.event import Event


class SendError(StepqError):
    """Events could not be sent (Redis unreachable); nothing is half-written per run."""


class RedisTransport:
    """Sends events straight into Redis: stores them and starts their runs."""

    def __init__(self, url: str, limits: Limits | None = None) -> None:
        self.url = url
        self.limits = limits or Limits.from_env()
        self._ingest: Ingest | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_ingest: Ingest | None = None
        self._sync_lock = threading.Lock()

    def _make_ingest(self) -> Ingest:
        redis = connect(self.url)
        store = RunStore(redis, self.limits)
        return Ingest(redis, store, Registry(redis, store.scripts))

    async def send(self, events: Sequence[Event]) -> list[str]:
        if self._ingest is None:
            self._ingest = self._make_ingest()
        return await _send(self._ingest, events, self.url)

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
                self._sync_ingest = self._make_ingest()
            assert self._sync_ingest is not None
            return self._sync_loop.run_until_complete(_send(self._sync_ingest, events, self.url))

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel a run; False when it had already ended (or does not exist)."""
        from runtime import lifecycle, store

        if self._ingest is None:
            self._ingest = self._make_ingest()
        outcome = await lifecycle.cancel(self._ingest, run_id, reason)
        return outcome is store.Outcome.OK

    async def aclose(self) -> None:
        if self._ingest is not None:
            await self._ingest.redis.aclose()
            self._ingest = None


async def _send(ingest: Ingest, events: Sequence[Event], url: str) -> list[str]:
    try:
        return await ingest.send(events)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise SendError(f"could not send {len(events)} event(s): Redis at {url} did not answer ({exc})") from exc
