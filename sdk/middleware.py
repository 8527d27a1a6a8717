"""Middleware, as in Inngest's Python SDK: classes whose hooks run around each invocation and each send.

A middleware is a class (or any callable) taking ``(client, raw_request)``, given in a list to
``Client(middleware=[...])`` or ``create_function(middleware=[...])``. A fresh instance is made for
every invocation of a function (the client's middleware first, then the function's) and for every
``client.send``. Subclass ``Middleware`` for ``async def`` hooks or ``MiddlewareSync`` for plain ones;
either kind works with ``async def`` and plain ``def`` functions alike.

One invocation calls, in this order (``*`` = last middleware first, as inngest-py 0.5 runs its
"after" hooks):

1. ``transform_input(ctx, function, steps)``: may replace ``ctx.event``/``ctx.events`` and the
   memoized step data in ``steps`` before the function sees them.
2. ``before_memoization()``, then, once every memoized step was replayed (at once when there are
   none), ``after_memoization()*`` and ``before_execution()``: new code is about to run.
3. ``after_execution()*``: the function returned or stopped at new steps (not when it raised).
4. ``transform_output(result)*``: may replace the function's return value, a step's output, or the
   error; an invoke step's ``opts`` may be changed in place.
5. ``before_response()``: the answer is final.

``client.send`` and ``step.send_event`` call ``before_send_events(events)`` (which may change the
events, or replace entries of the list) and ``after_send_events(result)*``.

``before_memoization`` and ``after_memoization`` come from earlier inngest-py releases (0.5 dropped
them); the rest follow inngest-py 0.5.19.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from .event import Event

if TYPE_CHECKING:
    from .context import Context, ContextSync
    from .function import Function
    from .opcodes import Op


class _Empty:
    """No output: the function raised, or the step has no value (a sleep, a planned step)."""

    _instance: _Empty | None = None

    def __new__(cls) -> _Empty:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "EMPTY"

    def __bool__(self) -> bool:
        return False


#: The ``output`` of a ``TransformOutputResult`` that has none.
EMPTY = _Empty()


@dataclasses.dataclass
class Output:
    """One memoized step as middleware sees it: its ``data``, or the ``error`` it failed with.

    A ``step.run`` or ``invoke`` memo holds its value in ``data``; a ``wait_for_event`` memo holds
    the event that arrived (its wire dict) or None; a failed step holds the error dict (name,
    message, stack) in ``error``.
    """

    data: Any = None
    error: dict[str, Any] | None = None


class StepMemos:
    """The memoized steps of an invocation, by step key; ``transform_input`` may change their data.

    Replace an ``Output``'s ``data`` (or ``error``) rather than change the value in place: memo values
    are shared with the worker's cache of the run.
    """

    def __init__(self, memos: dict[str, Output], names: dict[str, str] | None = None) -> None:
        self._memos = memos
        self._names = names or {}

    @property
    def size(self) -> int:
        return len(self._memos)

    def __len__(self) -> int:
        return len(self._memos)

    def values(self) -> Iterator[Output]:
        return iter(self._memos.values())

    def items(self) -> Iterator[tuple[str, Output]]:
        return iter(self._memos.items())

    def name(self, key: str) -> str | None:
        """The step id a user wrote for the step at ``key``, when the runtime knows it."""
        return self._names.get(key)


@dataclasses.dataclass
class TransformOutputStepInfo:
    """The step a ``TransformOutputResult`` is about: its id as written, its opcode and options."""

    id: str
    op: Op
    opts: dict[str, Any] | None


@dataclasses.dataclass
class TransformOutputResult:
    """What ``transform_output`` may change: ``output`` and ``error`` are kept after the hooks ran.

    ``step`` is None for the function's own result; changes to its fields are discarded, but an
    invoke step's ``opts`` dict may be changed in place (the invoke's payload is sent as it is then).
    """

    error: Exception | None
    output: object
    step: TransformOutputStepInfo | None

    def has_output(self) -> bool:
        return self.output is not EMPTY


@dataclasses.dataclass
class SendEventsResult:
    """What ``after_send_events`` gets: the stored events' ids, or the error that stopped the send."""

    ids: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


class Middleware:
    """Base class of middleware with ``async def`` hooks; override the hooks you need."""

    def __init__(self, client: Any, raw_request: object) -> None:
        """``client``: the stepq client; ``raw_request``: the HTTP request when served
        (``stepq.serve``'s ``HandlerRequest``), None in a worker or for a send."""
        self.client = client
        self.raw_request = raw_request

    async def transform_input(self, ctx: Context | ContextSync, function: Function, steps: StepMemos) -> None:
        """Before the function is called: may change ``ctx.event``, ``ctx.events`` and ``steps``."""
        return None

    async def before_memoization(self) -> None:
        """Before memoized steps are replayed; right after ``transform_input``."""
        return None

    async def after_memoization(self) -> None:
        """After the last memoized step was replayed; right before ``before_execution``."""
        return None

    async def before_execution(self) -> None:
        """Before code that has not run before runs; once per invocation."""
        return None

    async def after_execution(self) -> None:
        """After the function returned or stopped at new steps (not when it raised)."""
        return None

    async def transform_output(self, result: TransformOutputResult) -> None:
        """After the function or a step produced a value (or an error): may change it."""
        return None

    async def before_response(self) -> None:
        """When the invocation's answer is final, before it goes back to the runtime."""
        return None

    async def before_send_events(self, events: list[Event]) -> None:
        """Before events are sent: may change their data or replace entries of ``events``."""
        return None

    async def after_send_events(self, result: SendEventsResult) -> None:
        """After events were sent (or the send failed: ``result.error``)."""
        return None


class MiddlewareSync:
    """Base class of middleware with plain ``def`` hooks; the hooks of ``Middleware``, not awaited."""

    def __init__(self, client: Any, raw_request: object) -> None:
        """See ``Middleware.__init__``."""
        self.client = client
        self.raw_request = raw_request

    def transform_input(self, ctx: Context | ContextSync, function: Function, steps: StepMemos) -> None:
        """See ``Middleware.transform_input``."""
        return None

    def before_memoization(self) -> None:
        """See ``Middleware.before_memoization``."""
        return None

    def after_memoization(self) -> None:
        """See ``Middleware.after_memoization``."""
        return None

    def before_execution(self) -> None:
        """See ``Middleware.before_execution``."""
        return None

    def after_execution(self) -> None:
        """See ``Middleware.after_execution``."""
        return None

    def transform_output(self, result: TransformOutputResult) -> None:
        """See ``Middleware.transform_output``."""
        return None

    def before_response(self) -> None:
        """See ``Middleware.before_response``."""
        return None

    def before_send_events(self, events: list[Event]) -> None:
        """See ``Middleware.before_send_events``."""
        return None

    def after_send_events(self, result: SendEventsResult) -> None:
        """See ``Middleware.after_send_events``."""
        return None


#: What ``middleware=[...]`` lists: a middleware class, or a factory with its signature.
UninitializedMiddleware: TypeAlias = Callable[[Any, object], Middleware | MiddlewareSync]
