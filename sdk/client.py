"""The client apps create: it defines functions and sends events."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

from .context import Context, ContextSync
from .errors import FunctionConfigError, InvalidEventError, StepqError
from .event import Event
from .flow_control import (
    Batch,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    RunConcurrency,
    Singleton,
    Throttle,
)
from .flow_spec import options_to_config, parse_flow_control
from .function import Cancel, Function, Timeouts, normalize_triggers
from .http_transport import HttpTransport
from .middleware import UninitializedMiddleware
from .middleware_manager import MiddlewareManager, check_middleware_list, send_through, send_through_sync
from .redis_config import redis_url_from_env
from .retry import Backoff
from .serializer import NOT_SET, Serializer, checked_serializer, no_serializer
from .transport import EventTransport, load_transport
from .triggers import TriggerCron, TriggerEvent

T = TypeVar("T")

#: Retries after the first attempt when ``create_function`` is given none (Inngest's default too).
DEFAULT_RETRIES = 4

#: Emitted when a run fails for good (``data``: function_id, run_id, error, event).
FUNCTION_FAILED = "stepq/function.failed"
#: Emitted when a run ends, whatever the outcome (``data`` adds ``result`` or ``error``).
FUNCTION_FINISHED = "stepq/function.finished"


def default_redis_url() -> str:
    """``STEPQ_REDIS_URL``, else the URL in the file ``STEPQ_REDIS_URL_FILE`` names, else Redis on
    localhost (``stepq.redis_config``)."""
    return redis_url_from_env()


#: The key sent when none is configured: a dev-mode API accepts it, any other answers 401.
NO_EVENT_KEY = "NO_EVENT_KEY_SET"

#: ``INNGEST_DEV`` values that mean "not dev mode", as Inngest's SDKs read them.
_FALSY = ("", "0", "false", "no", "off")


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


#: An ``async def`` function's handler: takes a ``Context``, returns a ``T`` (JSON-compatible).
FunctionHandlerAsync: TypeAlias = Callable[[Context], Awaitable[T]]
#: A plain ``def`` function's handler: takes a ``ContextSync``.
FunctionHandlerSync: TypeAlias = Callable[[ContextSync], T]
#: inngest-py's logger type: what ``ctx.logger`` writes to when the client is given one.
Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger]


class Inngest:
    """An app's handle on stepq: ``Inngest(app_id="shop")``, then ``@client.create_function(...)``.

    Takes inngest-py 0.5's arguments, so that code written for Inngest's Python SDK builds its
    client unchanged; ``Client`` is the same class (``Client("shop")`` takes the app id positionally).
    What each argument does in stepq:

    - ``app_id``: the app's id; functions are registered and queued under it.
    - ``is_production``: production mode (``True``) or dev mode (``False``). Default: dev mode when
      ``INNGEST_DEV`` is set (and not ``0``/``false``), else production. It decides whether ``serve``
      checks and signs requests (production needs a signing key); ``serve(..., dev=)`` overrides it.
      Sending events and workers do not depend on it.
    - ``signing_key`` (default ``INNGEST_SIGNING_KEY``) and ``signing_key_fallback`` (default
      ``INNGEST_SIGNING_KEY_FALLBACK``; an argument here, an environment variable only in
      inngest-py): the keys ``serve`` checks the executor's signatures with and authorizes its API
      calls with, unless ``serve`` is given keys of its own.
    - ``event_key``: the key ``send`` posts events with when they go over HTTP (below). Default:
      ``STEPQ_EVENT_KEY``, then ``INNGEST_EVENT_KEY``, else a placeholder only a dev-mode API accepts.
    - ``event_api_base_url`` (alias ``event_api_url``; default ``STEPQ_EVENT_API_URL``): the event
      API (``stepq api``, e.g. ``http://127.0.0.1:8288``) that ``send`` posts to, at ``/e/<key>`` as
      in Inngest, retrying network errors and 5xx answers without starting any function twice (see
      ``stepq.http_transport``). Without it, events go straight into Redis (``redis_url``).
    - ``api_base_url``: the stepq API that ``serve`` syncs with and reads run state from, unless
      ``serve`` is given one (default: ``INNGEST_API_BASE_URL``, ``INNGEST_BASE_URL``, a URL in
      ``INNGEST_DEV``, else http://127.0.0.1:8288).
    - ``env`` (default ``INNGEST_ENV``): sent as ``X-Inngest-Env`` on ``serve``'s API calls. stepq
      keeps one environment per Redis database and does not separate branch environments, so the
      value has no further effect.
    - ``logger``: a ``logging.Logger`` (or adapter) that ``ctx.logger`` writes to, staying quiet while
      memoized steps replay. Default: stepq's structured log (structlog). stepq's own log lines go
      to structlog either way.
    - ``middleware``: middleware classes (``stepq.Middleware``/``MiddlewareSync``) run around every
      function's invocations and every send, before each function's own (``stepq.middleware``).
    - ``request_timeout``: the timeout of ``send``'s HTTP requests (an int is milliseconds, as in
      inngest-py). Default 30 s (5 s to connect). No effect when events go to Redis.
    - ``app_version``: accepted and kept as ``client.app_version``, but **no effect**: stepq does not
      version apps (a sync replaces the app's functions whatever its version).
    - ``serializer``: converts the outputs of steps and functions given an ``output_type`` (e.g.
      ``PydanticSerializer()`` with ``output_type=MyModel``), as in inngest-py: serialized to JSON
      before they are stored, deserialized when read back. Without it, outputs must be JSON.

    stepq's own arguments: ``redis_url`` (default ``STEPQ_REDIS_URL``, else the URL in the file
    ``STEPQ_REDIS_URL_FILE`` names, else ``redis://localhost:6379/0``; ``rediss://`` and
    ``redis+sentinel://`` too, see ``stepq.runtime.redis_urls``) and ``transport`` (an
    ``EventTransport`` that replaces both).
    """

    def __init__(
        self,
        app_id: str,
        *,
        api_base_url: str | None = None,
        app_version: str | None = None,
        env: str | None = None,
        event_api_base_url: str | None = None,
        event_key: str | None = None,
        is_production: bool | None = None,
        logger: Logger | None = None,
        middleware: list[UninitializedMiddleware] | None = None,
        request_timeout: int | dt.timedelta | None = None,
        serializer: Serializer | None = None,
        signing_key: str | None = None,
        signing_key_fallback: str | None = None,
        redis_url: str | None = None,
        transport: EventTransport | None = None,
        event_api_url: str | None = None,
    ) -> None:
        if not isinstance(app_id, str) or not app_id.strip():
            raise FunctionConfigError("Inngest: app_id must be a non-empty string")
        self.serializer = checked_serializer(serializer)
        if event_api_base_url and event_api_url and event_api_base_url != event_api_url:
            raise FunctionConfigError(
                f"Inngest: event_api_base_url={event_api_base_url!r} and event_api_url={event_api_url!r} "
                "disagree; pass one"
            )
        if is_production is not None and not isinstance(is_production, bool):
            raise FunctionConfigError(f"Inngest: is_production must be a bool or None, got {is_production!r}")
        self.app_id = app_id
        self.app_version = app_version
        self.redis_url = redis_url or default_redis_url()
        url = event_api_base_url or event_api_url or _env("STEPQ_EVENT_API_URL")
        self.event_api_url = url
        self.event_key = event_key or _env("STEPQ_EVENT_KEY") or _env("INNGEST_EVENT_KEY") or NO_EVENT_KEY
        if self.event_api_url is not None and not self.event_api_url.startswith(("http://", "https://")):
            raise FunctionConfigError(
                f"Inngest: event_api_base_url (event_api_url) must be an http(s) URL, got {self.event_api_url!r}"
            )
        if api_base_url is not None and not api_base_url.startswith(("http://", "https://")):
            raise FunctionConfigError(f"Inngest: api_base_url must be an http(s) URL, got {api_base_url!r}")
        self.api_base_url = api_base_url
        # Kept as given: the properties below fall back to the environment when read, so that a
        # client built at import time follows variables set later (as serve() always did).
        self._is_production = is_production
        self._signing_key = signing_key
        self._signing_key_fallback = signing_key_fallback
        self._env = env
        self.logger: Logger | None = logger
        self.request_timeout = _timeout_seconds(request_timeout)
        self._transport = transport
        self._functions: dict[str, Function] = {}
        #: Middleware run around every function's invocations and every send (``stepq.middleware``).
        self.middleware: list[UninitializedMiddleware] = check_middleware_list(middleware, "Client")

    def add_middleware(self, middleware: UninitializedMiddleware) -> None:
        """Add a middleware class (or factory) after those already given."""
        self.middleware = [*self.middleware, *check_middleware_list([middleware], "Client.add_middleware")]

    @property
    def is_production(self) -> bool:
        """``is_production`` as given, else False when ``INNGEST_DEV`` is set (and not 0/false)."""
        if self._is_production is not None:
            return self._is_production
        return (_env("INNGEST_DEV") or "").lower() in _FALSY

    @property
    def signing_key(self) -> str | None:
        """``signing_key`` as given, else ``INNGEST_SIGNING_KEY``."""
        return self._signing_key or _env("INNGEST_SIGNING_KEY")

    @property
    def signing_key_fallback(self) -> str | None:
        """``signing_key_fallback`` as given, else ``INNGEST_SIGNING_KEY_FALLBACK``."""
        return self._signing_key_fallback or _env("INNGEST_SIGNING_KEY_FALLBACK")

    @property
    def env(self) -> str | None:
        """``env`` as given, else ``INNGEST_ENV``."""
        return self._env or _env("INNGEST_ENV")

    @property
    def functions(self) -> dict[str, Function]:
        """This app's functions by id."""
        return dict(self._functions)

    def set_logger(self, logger: Logger) -> None:
        """Replace the logger ``ctx.logger`` writes to."""
        self.logger = logger

    def create_function(
        self,
        *,
        batch_events: Batch | None = None,
        cancel: list[Cancel] | None = None,
        concurrency: list[Concurrency | RunConcurrency] | None = None,
        debounce: Debounce | None = None,
        fn_id: str | None = None,
        idempotency: str | None = None,
        middleware: list[UninitializedMiddleware] | None = None,
        name: str | None = None,
        on_failure: FunctionHandlerAsync[Any] | FunctionHandlerSync[Any] | None = None,
        output_type: object = NOT_SET,
        priority: Priority | None = None,
        rate_limit: RateLimit | None = None,
        retries: int | None = None,
        throttle: Throttle | None = None,
        timeouts: Timeouts | None = None,
        singleton: Singleton | None = None,
        trigger: TriggerCron | TriggerEvent | list[TriggerCron | TriggerEvent] | None = None,
        id: str | None = None,
        backoff: Backoff | None = None,
    ) -> Callable[[FunctionHandlerAsync[T] | FunctionHandlerSync[T]], Function[T]]:
        """Declare a function: inngest-py 0.5's keywords, plus stepq's ``id`` (an alias of ``fn_id``)
        and ``backoff``.

        ``trigger`` is a ``TriggerEvent``, a ``TriggerCron`` or a list of them (none: the function
        is only invoked). ``retries`` counts retries after the first attempt (default 4: up to 5
        attempts per step). ``backoff`` sets the wait between attempts (default: 1 s doubling to
        10 min, with jitter). ``cancel`` lists events that cancel a run; ``timeouts`` bounds its start
        and its duration. ``on_failure`` is a handler run once when a run fails for good: a function
        of its own (``<id>-failure``) triggered by the ``stepq/function.failed`` event, whose data
        holds ``function_id``, ``run_id``, ``error`` and the original ``event``. ``middleware`` runs
        for this function after the client's.

        Flow control (``batch_events``, ``concurrency``, ``debounce``, ``idempotency``,
        ``priority``, ``rate_limit``, ``singleton``, ``throttle``) takes inngest-py's option types
        (and stepq's ``RunConcurrency`` in ``concurrency``), validated as Inngest does (an invalid
        one raises ``FunctionConfigError`` naming its field) and enforced by the runtime (README,
        "Flow control"); an empty ``concurrency`` list, or a limit of 0, is none. ``output_type``
        converts the function's return value through the client's ``serializer`` (needed then):
        stored as JSON, deserialized for ``step.invoke``.
        """
        label = id if id is not None else fn_id
        # Validated here, so a bad option gets its precise error at definition time; the JSON form
        # is what the function registers (as a served function's config carries it).
        prefix = f"create_function({label!r}): "
        flow = options_to_config(
            label=prefix,
            batch_events=batch_events,
            concurrency=concurrency,
            debounce=debounce,
            idempotency=idempotency,
            priority=priority,
            rate_limit=rate_limit,
            singleton=singleton,
            throttle=throttle,
        )
        parse_flow_control(flow, prefix=prefix, python_names=True, has_cancel=bool(cancel))
        if output_type is not NOT_SET and self.serializer is None:
            raise no_serializer(f"create_function({label!r})")
        if id is not None and fn_id is not None and id != fn_id:
            raise FunctionConfigError(f"create_function: id={id!r} and fn_id={fn_id!r} disagree; pass one")
        function_id = id if id is not None else fn_id
        if function_id is None:
            raise FunctionConfigError("create_function: fn_id is required")
        triggers = normalize_triggers(trigger)
        function_middleware = check_middleware_list(middleware, f"create_function({function_id!r})")

        def decorator(handler: FunctionHandlerAsync[T] | FunctionHandlerSync[T]) -> Function[T]:
            fn: Function[T] = Function(
                id=function_id,
                app_id=self.app_id,
                handler=handler,
                triggers=triggers,
                name=name or function_id,
                retries=DEFAULT_RETRIES if retries is None else retries,
                backoff=backoff or Backoff(),
                cancel=tuple(cancel or ()),
                timeouts=timeouts,
                client=self,
                middleware=function_middleware,
                output_type=output_type,
                flow=flow,
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
                if self.request_timeout is None:
                    self._transport = HttpTransport(self.event_api_url, self.event_key)
                else:
                    self._transport = HttpTransport(self.event_api_url, self.event_key, timeout=self.request_timeout)
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


#: One class, two names: ``Client`` is stepq's original name for ``Inngest``.
Client = Inngest


def _timeout_seconds(value: int | dt.timedelta | None) -> float | None:
    """inngest-py's ``request_timeout`` in seconds: it is an int of milliseconds or a timedelta."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value / 1000
    else:
        raise FunctionConfigError(f"Inngest: request_timeout must be an int (ms) or a timedelta, got {value!r}")
    if seconds <= 0:
        raise FunctionConfigError(f"Inngest: request_timeout must be positive, got {value!r}")
    return seconds


def validated_events(events: Event | Sequence[Event]) -> list[Event]:
    """``events`` (one or a list, Events or dicts) checked and copied, or InvalidEventError."""
    batch = [events] if isinstance(events, Event | dict) else list(events)
    if not batch:
        raise InvalidEventError("send: no events given")
    return [Event.from_dict(e, where=f"events[{i}]" if len(batch) > 1 else "event") for i, e in enumerate(batch)]
