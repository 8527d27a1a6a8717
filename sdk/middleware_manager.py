"""Runs the hooks of one request's middleware in inngest-py's order, from async or sync code.

A manager is made per invocation (the client's middleware, then the function's) or per send (the
client's). "Before" hooks run in list order, "after" hooks (``after_memoization``,
``after_execution``, ``transform_output``, ``after_send_events``) in reverse, as inngest-py 0.5 does.

Sync and async middleware both work in sync and async code: a plain hook is called where it is; an
``async def`` hook called from a plain ``def`` function's thread runs on the invocation's event loop
(which is free: it awaits that thread), and from sync code with no event loop at all (a script's
``client.send_sync``) in a fresh one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Sequence
from typing import Any

from .errors import FunctionConfigError, StepqError
from .event import Event
from .middleware import (
    Middleware,
    MiddlewareSync,
    SendEventsResult,
    StepMemos,
    TransformOutputResult,
    UninitializedMiddleware,
)
from .transport import EventTransport


class MiddlewareError(StepqError):
    """Middleware could not run where it was called (an async hook from sync code on the event loop)."""


def check_middleware_list(value: Any, where: str) -> list[UninitializedMiddleware]:
    """``middleware=`` as given to a client or a function: a list of callables, or a clear error."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise FunctionConfigError(f"{where}: middleware must be a list of middleware classes, got {value!r}")
    for item in value:
        if isinstance(item, Middleware | MiddlewareSync) or not callable(item):
            raise FunctionConfigError(
                f"{where}: middleware entries must be classes (or factories) taking (client, raw_request), "
                f"got {item!r}; pass the class, not an instance"
            )
        if isinstance(item, type) and not issubclass(item, Middleware | MiddlewareSync):
            raise FunctionConfigError(
                f"{where}: middleware class {item.__name__} must subclass stepq.Middleware or stepq.MiddlewareSync"
            )
    return list(value)


class MiddlewareManager:
    """The middleware instances of one request, and the hook calls in order."""

    def __init__(self, client: Any, raw_request: object, factories: Sequence[UninitializedMiddleware]) -> None:
        self.client = client
        self.raw_request = raw_request
        self.middleware: list[Middleware | MiddlewareSync] = []
        for factory in factories:
            instance = factory(client, raw_request)
            if not isinstance(instance, Middleware | MiddlewareSync):
                raise MiddlewareError(
                    f"middleware {factory!r} made {instance!r}, which is not a stepq.Middleware or stepq.MiddlewareSync"
                )
            self.middleware.append(instance)
        #: The event loop of the invocation: async hooks called from a sync function's thread run there.
        self.loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of_client(cls, client: Any, raw_request: object = None) -> MiddlewareManager | None:
        """The client's middleware for one request, or None when it has none."""
        factories = list(getattr(client, "middleware", None) or [])
        return cls(client, raw_request, factories) if factories else None

    @classmethod
    def of_function(cls, fn: Any, raw_request: object = None) -> MiddlewareManager | None:
        """The client's middleware then the function's, for one invocation; None when there is none."""
        client = getattr(fn, "client", None)
        factories = [*(getattr(client, "middleware", None) or []), *(getattr(fn, "middleware", None) or [])]
        return cls(client, raw_request, factories) if factories else None

    # -- calling hooks ---------------------------------------------------------------------------------

    def _ordered(self, reverse: bool) -> list[Middleware | MiddlewareSync]:
        return list(reversed(self.middleware)) if reverse else self.middleware

    async def _call(self, hook: str, *args: Any, reverse: bool = False) -> None:
        for instance in self._ordered(reverse):
            result = getattr(instance, hook)(*args)
            if inspect.isawaitable(result):
                await result

    def _call_sync(self, hook: str, *args: Any, reverse: bool = False) -> None:
        for instance in self._ordered(reverse):
            result = getattr(instance, hook)(*args)
            if inspect.isawaitable(result):
                self._wait(result, f"{type(instance).__name__}.{hook}")

    def _wait(self, awaitable: Awaitable[Any], name: str) -> None:
        """Run an async hook to its end from sync code."""

        async def hook() -> None:
            await awaitable

        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None:
            if loop is not None and loop.is_running():
                asyncio.run_coroutine_threadsafe(hook(), loop).result()
            else:
                asyncio.run(hook())
            return
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise MiddlewareError(
            f"async middleware hook {name} was called from synchronous code running on the event loop; "
            f"use the async API there (await client.send(...)) or make the middleware a stepq.MiddlewareSync"
        )

    # -- invocation hooks ------------------------------------------------------------------------------

    async def transform_input(self, ctx: Any, function: Any, steps: StepMemos) -> None:
        await self._call("transform_input", ctx, function, steps)

    async def before_memoization(self) -> None:
        await self._call("before_memoization")

    async def after_memoization(self) -> None:
        await self._call("after_memoization", reverse=True)

    def after_memoization_sync(self) -> None:
        self._call_sync("after_memoization", reverse=True)

    async def before_execution(self) -> None:
        await self._call("before_execution")

    def before_execution_sync(self) -> None:
        self._call_sync("before_execution")

    async def after_execution(self) -> None:
        await self._call("after_execution", reverse=True)

    async def transform_output(self, result: TransformOutputResult) -> None:
        await self._call("transform_output", result, reverse=True)

    async def before_response(self) -> None:
        await self._call("before_response")

    # -- send hooks ------------------------------------------------------------------------------------

    async def before_send_events(self, events: list[Event]) -> None:
        await self._call("before_send_events", events)

    def before_send_events_sync(self, events: list[Event]) -> None:
        self._call_sync("before_send_events", events)

    async def after_send_events(self, result: SendEventsResult) -> None:
        await self._call("after_send_events", result, reverse=True)

    def after_send_events_sync(self, result: SendEventsResult) -> None:
        self._call_sync("after_send_events", result, reverse=True)


# -- sending through middleware --------------------------------------------------------------------


def _checked_again(events: list[Event]) -> list[Event]:
    """The events as middleware left them, checked again (a hook may have replaced entries)."""
    return [Event.from_dict(e, where=f"events[{i}] (after before_send_events)") for i, e in enumerate(events)]


async def send_through(manager: MiddlewareManager | None, transport: EventTransport, events: list[Event]) -> list[str]:
    """Send ``events`` (already validated) with ``transport``, between the manager's send hooks."""
    if manager is None:
        return await transport.send(events)
    await manager.before_send_events(events)
    ids = await transport.send(_checked_again(events))
    await manager.after_send_events(SendEventsResult(ids=list(ids)))
    return ids


def send_through_sync(manager: MiddlewareManager | None, transport: EventTransport, events: list[Event]) -> list[str]:
    """``send_through`` for synchronous code."""
    if manager is None:
        return transport.send_sync(events)
    manager.before_send_events_sync(events)
    ids = transport.send_sync(_checked_again(events))
    manager.after_send_events_sync(SendEventsResult(ids=list(ids)))
    return ids
