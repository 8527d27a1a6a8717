"""The client apps create: it defines functions and sends events."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from sdk.errors import FunctionConfigError, InvalidEventError
from sdk.event import Event
from sdk.function import Function, normalize_triggers
from sdk.retry import Backoff
from sdk.transport import EventTransport, load_transport
from sdk.triggers import Trigger

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def default_redis_url() -> str:
    """``STEPQ_REDIS_URL`` if set, else Redis on localhost."""
    return os.environ.get("STEPQ_REDIS_URL") or DEFAULT_REDIS_URL


class Client:
    """An app's handle on stepq: ``Client("shop")``, then ``@client.create_function(...)``.

    ``redis_url`` defaults to ``STEPQ_REDIS_URL``, else ``redis://localhost:6379/0``.
    """

    def __init__(
        self,
        app_id: str,
        *,
        redis_url: str | None = None,
        transport: EventTransport | None = None,
    ) -> None:
        if not isinstance(app_id, str) or not app_id.strip():
            raise FunctionConfigError("Client: app_id must be a non-empty string")
        self.app_id = app_id
        self.redis_url = redis_url or default_redis_url()
        self._transport = transport
        self._functions: dict[str, Function] = {}

    @property
    def functions(self) -> dict[str, Function]:
        """This app's functions by id."""
        return dict(self._functions)

    def create_function(
        self,
        *,
        id: str | None = None,
        fn_id: str | None = None,
        trigger: Trigger | Sequence[Trigger] | None = None,
        name: str | None = None,
        retries: int = 4,
        backoff: Backoff | None = None,
    ) -> Callable[[Callable[..., Any]], Function]:
        """Declare a function. ``fn_id`` is accepted as an alias of ``id``; ``trigger`` may be a list.

        ``retries`` counts retries after the first attempt (4 means up to 5 attempts per step).
        ``backoff`` sets the wait between attempts (default: 1 s doubling to 10 min, with jitter).
        """
        if id is not None and fn_id is not None and id != fn_id:
            raise FunctionConfigError(f"create_function: id={id!r} and fn_id={fn_id!r} disagree; pass one")
        function_id = id if id is not None else fn_id
        if function_id is None:
            raise FunctionConfigError("create_function: id is required")
        triggers = normalize_triggers(trigger)

        def decorator(handler: Callable[..., Any]) -> Function:
            fn = Function(
                id=function_id,
                app_id=self.app_id,
                handler=handler,
                triggers=triggers,
                name=name or function_id,
                retries=retries,
                backoff=backoff or Backoff(),
            )
            if fn.id in self._functions:
                raise FunctionConfigError(f"function id {fn.id!r} is defined twice in app {self.app_id!r}")
            self._functions[fn.id] = fn
            return fn

        return decorator

    @property
    def transport(self) -> EventTransport:
        if self._transport is None:
            self._transport = load_transport("redis", self.redis_url)
        return self._transport

    async def send(self, events: Event | Sequence[Event]) -> list[str]:
        """Store the event(s) and start every function they trigger; return the stored events' ids.

        Raises ``InvalidEventError`` (nothing stored) when any event is malformed.
        """
        return await self.transport.send(_validated(events))

    def send_sync(self, events: Event | Sequence[Event]) -> list[str]:
        """``send`` for synchronous code."""
        return self.transport.send_sync(_validated(events))

    async def aclose(self) -> None:
        """Release the client's connections."""
        if self._transport is not None:
            await self._transport.aclose()


def _validated(events: Event | Sequence[Event]) -> list[Event]:
    batch = [events] if isinstance(events, Event | dict) else list(events)
    if not batch:
        raise InvalidEventError("send: no events given")
    return [Event.from_dict(e, where=f"events[{i}]" if len(batch) > 1 else "event") for i, e in enumerate(batch)]
