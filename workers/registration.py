"""An app's registration, kept in Redis by the app's workers for as long as they run.

Events start the functions an app registered (``stepq:functions``, the trigger sets). If Redis
comes back empty (no persistence, a flush, a failover to an empty replica), events would be
accepted and start nothing until a worker restarted. So each worker restores its app's registration:

- at start (unconditionally, as before: the newest worker's code wins);
- when its watchdog's probe finds the app's registration marker gone (``keys.app_registration``,
  checked once a second on the watchdog's own connection), and after every reconnect;
- every ``refresh_s`` (default 60 s), which also repairs a partial loss (keys evicted, a replica
  that missed the last registration).

A rolling deploy has workers of two versions of an app running side by side: they must not take
turns replacing each other's function set. The marker records when the current registration's worker
first registered (Redis's clock) and a fingerprint of its function set; a worker re-registers only
if the marker is gone, holds its own fingerprint, or is older than its own first registration. The
newest-started version wins, as it did when registration happened at start only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import structlog

from stepq.runtime import keys
from stepq.runtime.connection import RedisClient
from stepq.runtime.registry import FunctionOwnedError, Registry

from .faults import REDIS_TROUBLE, Faults

log = structlog.get_logger("stepq.worker")

#: How often a worker re-registers its app even when nothing seems lost (STEPQ_REGISTRATION_REFRESH).
DEFAULT_REFRESH_S = 60.0


class RegistrationKeeper:
    """Registers ``configs`` as ``app_id``'s function set, and keeps them registered."""

    def __init__(
        self,
        redis: RedisClient,
        registry: Registry,
        app_id: str,
        configs: Sequence[dict[str, Any]],
        *,
        refresh_s: float,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.app_id = app_id
        self.configs = list(configs)
        self.refresh_s = refresh_s
        self.marker = keys.app_registration(app_id)
        canonical = json.dumps(self.configs, sort_keys=True, separators=(",", ":"), default=str)
        self.fingerprint = hashlib.sha1(canonical.encode()).hexdigest()[:16]
        #: Redis's clock (µs) when this worker first registered; orders deployments.
        self.stamp: int | None = None
        self._due = asyncio.Event()
        self._faults = Faults("registration")
        self._superseded_by: str | None = None

    def describe(self) -> str:
        return f"{self.app_id} ({len(self.configs)} functions)"

    async def register_at_start(self) -> str:
        """The first registration: always made (the newest worker's code wins, as before)."""
        seconds, micros = await self.redis.time()
        self.stamp = int(seconds) * 1_000_000 + int(micros)
        await self._register()
        self._due.clear()  # the watchdog may have found no marker before this first registration
        return self.describe()

    def refresh_soon(self) -> None:
        """Check (and restore) the registration now: Redis came back after an outage."""
        self._due.set()

    async def probe(self, client: RedisClient) -> None:
        """The watchdog's probe for an app's worker: one EXISTS, which also proves Redis answers."""
        if not await client.exists(self.marker):
            self._due.set()

    async def run(self) -> None:
        """Restore the registration when due (background task, started after ``register_at_start``)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self.refresh_s)
            self._due.clear()
            try:
                await self.ensure()
            except REDIS_TROUBLE as exc:
                delay = self._faults.failed(exc)
                await asyncio.sleep(delay)
                self._due.set()  # try again after the backoff, not after a whole refresh period
            except FunctionOwnedError as exc:
                # Another app registered one of our function ids while ours was gone (Redis came
                # back empty): nothing was changed; say so, and try again at the next refresh.
                log.error("registration.conflict", app=self.app_id, function=exc.slug, owner=exc.owner)
            else:
                self._faults.succeeded()

    async def ensure(self) -> bool:
        """Register again unless a newer deployment of the app registered since; returns whether it did."""
        assert self.stamp is not None, "register_at_start first"
        current: bytes | None = await self.redis.get(self.marker)
        if current is not None:
            stamp, _, fingerprint = current.decode(errors="replace").partition(":")
            if fingerprint != self.fingerprint and _int(stamp) > self.stamp:
                if self._superseded_by != fingerprint:
                    self._superseded_by = fingerprint
                    log.info("registration.superseded", app=self.app_id, by=fingerprint, ours=self.fingerprint)
                return False
        self._superseded_by = None
        await self._register()
        if current is None:
            log.warning("registration.restored", app=self.app_id, functions=len(self.configs))
        return True

    async def _register(self) -> None:
        # The marker is written after the function set: if the worker dies in between, the marker is
        # missing and the next check registers again.
        await self.registry.register_app(self.app_id, self.configs)
        await self.redis.set(self.marker, f"{self.stamp}:{self.fingerprint}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
