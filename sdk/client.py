"""The client apps create: it defines functions and sends events."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from stepq.errors import FunctionConfigError, InvalidEventError, StepqError
from stepq.event import Event
from stepq.function import Cancel, Function, Timeouts, normalize_triggers
from stepq.http_transport import HttpTransport
from stepq.middleware import UninitializedMiddleware
from stepq.middleware_manager import MiddlewareManager, check_middleware_list, send_through, send_through_sync
from stepq.retry import Backoff
from stepq.transport import EventTransport, load_transport
from stepq.triggers import Trigger, TriggerEvent

#: Emitted when a run fails for good (``data``: function_id, run_id, error, event).
FUNCTION_FAILED = "stepq/function.failed"
#: Emitted when a run ends, whatever the outcome (``data`` adds ``result`` or ``error``).
FUNCTION_FINISHED = "stepq/function.finished"

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def default_redis_url() -> str:
    """``STEPQ_REDIS_URL`` if set, else Redis on localhost."""
    return os.environ.get("STEPQ_REDIS_URL") or DEFAULT_REDIS_URL


#: The key sent when none is configured: a dev-mode API accepts it, any other answers 401.
NO_EVENT_KEY = "NO_EVENT_KEY_SET"


class Client:
    """An app's handle on stepq: ``Client("shop")``, then ``@client.create_function(...)``.

    ``redis_url`` defaults to ``STEPQ_REDIS_URL``, else ``redis://localhost:6379/0``.

    Events go straight into Redis unless ``event_api_url`` (default: ``STEPQ_EVENT_API_URL``) names
    an event API (``stepq api``, e.g. ``http://127.0.0.1:8288``); then ``send`` posts them there with
    ``event_key`` (default: ``STEPQ_EVENT_KEY``), retrying network errors and 5xx answers without
    starting any function twice (see ``stepq.http_transport``).
    """

    def __init__(
        self,
        app_id: str,
        *,
        redis_url: str | None = None,
        transport: EventTransport | None = None,
        event_api_url: str | None = None,
        event_key: str | None = None,
        middleware: Sequence[UninitializedMiddleware] | None = None,
    ) -> None:
        if not isinstance(app_id, str) or not app_id.strip():
            raise FunctionConfigError("Client: app_id must be a non-empty string")
        self.app_id = app_id
        self.redis_url = redis_url or default_redis_url()
        self.event_api_url = event_api_url or os.environ.get("STEPQ_EVENT_API_URL") or None
        self.event_key = event_key or os.environ.get("STEPQ_EVENT_KEY") or NO_EVENT_KEY
        if self.event_api_url is not None and not self.event_api_url.startswith(("http://", "https://")):
            raise FunctionConfigError(f"Client: event_api_url must be an http(s) URL, got {self.event_api_url!r}")
        self._transport = transport
        self._functions: dict[str, Function] = {}
        #: Middleware run around every function's invocations and every send (``stepq.middleware``).
        self.middleware: list[UninitializedMiddleware] = check_middleware_list(middleware, "Client")

    def add_middleware(self, middleware: UninitializedMiddleware) -> None:
        """Add a middleware class (or factory) after those already given."""
        self.middleware = [*self.middleware, *check_middleware_list([middleware], "Client.add_middleware")]

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
        cancel: Sequence[Cancel] | None = None,
        timeouts: Timeouts | None = None,
        on_failure: Callable[..., Any] | None = None,
        middleware: Sequence[UninitializedMiddleware] | None = None,
    ) -> Callable[[Callable[..., Any]], Function]:
        """Declare a function. ``fn_id`` is accepted as an alias of ``id``; ``trigger`` may be a list.

        ``retries`` counts retries after the first attempt (4 means up to 5 attempts per step).
        ``backoff`` sets the wait between attempts (default: 1 s doubling to 10 min, with jitter).
        ``cancel`` lists events that cancel a run; ``timeouts`` bounds its start and its duration.
        ``on_failure`` is a handler run once when a run fails for good: a function of its own
        (``<id>-failure``) triggered by the ``stepq/function.failed`` event, whose data holds
        ``function_id``, ``run_id``, ``error`` and the original ``event``.
        ``middleware`` runs around this function's invocations (and its failure handler's), after
        the client's.
        """
        if id is not None and fn_id is not None and id != fn_id:
            raise FunctionConfigError(f"create_function: id={id!r} and fn_id={fn_id!r} disagree; pass one")
        function_id = id if id is not None else fn_id
        if function_id is None:
            raise FunctionConfigError("create_function: id is required")
        triggers = normalize_triggers(trigger)
        function_middleware = check_middleware_list(middleware, f"create_function({function_id!r})")

        def decorator(handler: Callable[..., Any]) -> Function:
            fn = Function(
                id=function_id,
                app_id=self.app_id,
                handler=handler,
                triggers=triggers,
                name=name or function_id,
                retries=retries,
                backoff=backoff or Backoff(),
                cancel=tuple(cancel or ()),
                timeouts=timeouts,
                client=self,
                middleware=function_middleware,
            )
            if fn.id in self._functions:
                raise FunctionConfigError(f"function id {fn.id!r} is defined twice in app {self.app_id!r}")
            self._functions[fn.id] = fn
            if on_failure is not None:
                self._add_failure_handler(fn, on_failure)
            return fn

        return decorator

    def _add_failure_handler(self, fn: Function, handler: Callable[..., Any]) -> None:
        failure = Function(
            id=f"{fn.id}-failure",
            app_id=self.app_id,
            handler=handler,
            triggers=(TriggerEvent(event=FUNCTION_FAILED, expression=f"event.data.function_id == '{fn.slug}'"),),
            name=f"{fn.name} (failure handler)",
            retries=0,
            client=self,
            middleware=fn.middleware,
        )
        if failure.id in self._functions:
            raise FunctionConfigError(f"function id {failure.id!r} is defined twice in app {self.app_id!r}")
        self._functions[failure.id] = failure

    @property
    def transport(self) -> EventTransport:
        if self._transport is None:
            if self.event_api_url is not None:
                self._transport = HttpTransport(self.event_api_url, self.event_key)
            else:
                self._transport = load_transport("redis", self.redis_url)
        return self._transport

    async def send(self, events: Event | Sequence[Event], *, skip_middleware: bool = False) -> list[str]:
        """Store the event(s) and start every function they trigger; return the stored events' ids.

        Raises ``InvalidEventError`` (nothing stored) when any event is malformed. The client's
        middleware sees the events first (``before_send_events``), unless ``skip_middleware``.
        """
        manager = None if skip_middleware else MiddlewareManager.of_client(self)
        return await send_through(manager, self.transport, validated_events(events))

    def send_sync(self, events: Event | Sequence[Event], *, skip_middleware: bool = False) -> list[str]:
        """``send`` for synchronous code."""
        manager = None if skip_middleware else MiddlewareManager.of_client(self)
        return send_through_sync(manager, self.transport, validated_events(events))

    async def cancel(self, run_id: str, *, reason: str = "cancelled by the API") -> bool:
        """Cancel a run: it takes no further steps (a running step may finish). False if it had ended."""
        cancel = getattr(self.transport, "cancel", None)
        if cancel is None:
            raise StepqError("this client's transport cannot cancel runs")
        return bool(await cancel(run_id, reason))

    async def aclose(self) -> None:
        """Release the client's connections."""
        if self._transport is not None:
            await self._transport.aclose()


def validated_events(events: Event | Sequence[Event]) -> list[Event]:
    """``events`` (one or a list, Events or dicts) checked and copied, or InvalidEventError."""
    batch = [events] if isinstance(events, Event | dict) else list(events)
    if not batch:
        raise InvalidEventError("send: no events given")
    return [Event.from_dict(e, where=f"events[{i}]" if len(batch) > 1 else "event") for i, e in enumerate(batch)]
