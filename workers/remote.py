"""Where a worker finds the function a job names: imported from the app, or registered over HTTP."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

from stepq.function import Function, Timeouts
from stepq.retry import Backoff
from stepq.runtime import keys
from stepq.runtime.limits import Limits
from stepq.runtime.registry import Registry


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteFunction:
    """A function an app serves over HTTP (Inngest's SDK protocol), as registered with stepq."""

    slug: str
    app_id: str
    id: str
    name: str
    url: str
    retries: int = 4
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    timeouts: Timeouts | None = None
    #: The limits its runs live within: those the API that registered it had.
    limits: Limits = dataclasses.field(default_factory=Limits)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RemoteFunction:
        timeouts = config.get("timeouts") or {}
        backoff = config.get("backoff") or {}
        return cls(
            slug=config["id"],
            app_id=config["app_id"],
            id=config.get("fn_id", config["id"]),
            name=config.get("name", config["id"]),
            url=config["url"],
            retries=int(config.get("retries", 4)),
            backoff=Backoff.from_dict(backoff) if backoff else Backoff(),
            timeouts=Timeouts(start=timeouts.get("start"), finish=timeouts.get("finish")) if timeouts else None,
            limits=Limits().with_config(config.get("limits")),
        )


Runnable = Function | RemoteFunction


class FunctionSource(Protocol):
    async def get(self, slug: str) -> Runnable | None: ...

    def describe(self) -> str: ...


class LocalFunctions:
    """The functions of the app this worker imported."""

    def __init__(self, functions: dict[str, Function]) -> None:
        self.functions = functions

    async def get(self, slug: str) -> Runnable | None:
        return self.functions.get(slug)

    def describe(self) -> str:
        return ", ".join(sorted(self.functions)) or "nothing"


class RegisteredFunctions:
    """Functions registered over HTTP (``POST /fn/register``), read from Redis and cached briefly so
    that a re-sync (a new URL, new retries) reaches workers within seconds."""

    def __init__(self, registry: Registry, ttl_s: float = 5.0) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, RemoteFunction | None]] = {}

    async def get(self, slug: str) -> Runnable | None:
        cached = self._cache.get(slug)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        record = await self.registry.get(slug)
        fn = None
        if record is not None and record.config.get("queue") == keys.HTTP_QUEUE_ID and record.config.get("url"):
            fn = RemoteFunction.from_config(record.config)
        self._cache[slug] = (now, fn)
        return fn

    def describe(self) -> str:
        return "the functions apps registered over HTTP"
