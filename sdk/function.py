"""Function definitions: a handler, its triggers and its retry policy."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, Generic

from typing_extensions import TypeVar

from .durations import DurationLike, to_duration_str, to_timedelta
from .errors import FunctionConfigError
from .retry import Backoff
from .serializer import NOT_SET
from .triggers import Trigger, TriggerCron, TriggerEvent

#: What a function returns; ``step.invoke`` of a ``Function[T]`` gives a ``T``. Defaults to Any, so
#: that a bare ``Function`` annotation stays valid under ``mypy --strict``.
T = TypeVar("T", covariant=True, default=Any)

MAX_RETRIES = 20
MAX_TRIGGERS = 10
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")


MAX_CANCELS = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel a run when an event named ``event`` arrives (and ``if_exp`` holds) within ``timeout``.

    ``if_exp`` is CEL over ``event`` (the run's trigger) and ``async`` (the arriving event), e.g.
    ``"async.data.order_id == event.data.order_id"``. ``timeout`` is an int of milliseconds (as in
    inngest-py), a timedelta, or a string like "1h".
    """

    event: str
    if_exp: str | None = None
    timeout: DurationLike | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event}
        if self.if_exp:
            out["if"] = self.if_exp
        if self.timeout is not None:
            out["timeout"] = to_duration_str(to_timedelta(self.timeout, what="Cancel.timeout"))
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Cancel a run not started within ``start`` of its creation, or not finished within ``finish``
    of its first start. Each is an int of milliseconds (as in inngest-py), a timedelta, or a string
    like "10m", "7d"."""

    start: DurationLike | None = None
    finish: DurationLike | None = None

    def to_dict(self) -> dict[str, str]:
        out = {}
        if self.start is not None:
            out["start"] = to_duration_str(to_timedelta(self.start, what="Timeouts.start"))
        if self.finish is not None:
            out["finish"] = to_duration_str(to_timedelta(self.finish, what="Timeouts.finish"))
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Function(Generic[T]):
    """A durable function: made by ``Inngest.create_function``, run by workers.

    Generic in what it returns, so that ``await ctx.step.invoke(..., function=f)`` is typed.
    """

    id: str
    app_id: str
    handler: Callable[..., Any]
    triggers: tuple[Trigger, ...]
    name: str
    retries: int = 4
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    cancel: tuple[Cancel, ...] = ()
    timeouts: Timeouts | None = None
    #: The client that defined it: ``step.send_event`` sends through it.
    client: Any = dataclasses.field(default=None, compare=False, repr=False)
    #: Middleware classes (or factories) run around each invocation, after the client's. Checked by
    #: ``create_function`` and again when an invocation makes them (stepq.middleware_manager); typed
    #: loosely here because the middleware hooks take a Function, and a module that typed this field
    #: exactly would import the middleware module that imports this one.
    middleware: Sequence[Callable[[Any, object], object]] = dataclasses.field(
        default_factory=list, compare=False, repr=False
    )
    #: What the client's serializer converts the return value from and to (``NOT_SET``: JSON as is).
    output_type: object = dataclasses.field(default=NOT_SET, compare=False, repr=False)
    #: Flow control in Inngest's JSON config form (``stepq.flow_spec``), validated by ``create_function``.
    flow: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise FunctionConfigError(
                f"function id {self.id!r}: use letters, digits and - _ . : / (not starting with a symbol)"
            )
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise FunctionConfigError(f"function {self.id!r}: retries must be an int, got {self.retries!r}")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise FunctionConfigError(
                f"function {self.id!r}: retries must be between 0 and {MAX_RETRIES}, got {self.retries}"
            )
        if len(self.triggers) > MAX_TRIGGERS:
            raise FunctionConfigError(f"function {self.id!r}: at most {MAX_TRIGGERS} triggers")
        for trigger in self.triggers:
            if not isinstance(trigger, TriggerEvent | TriggerCron):
                raise FunctionConfigError(
                    f"function {self.id!r}: trigger {trigger!r} is not a TriggerEvent or TriggerCron"
                )
        if not callable(self.handler):
            raise FunctionConfigError(f"function {self.id!r}: handler is not callable")
        if len(self.cancel) > MAX_CANCELS:
            raise FunctionConfigError(f"function {self.id!r}: at most {MAX_CANCELS} cancellation rules")
        for rule in self.cancel:
            if not isinstance(rule, Cancel) or not isinstance(rule.event, str) or not rule.event:
                raise FunctionConfigError(f"function {self.id!r}: cancel rule {rule!r} needs an event name")
            try:
                rule.to_dict()
            except ValueError as exc:
                raise FunctionConfigError(f"function {self.id!r}: {exc}") from None
        if self.timeouts is not None:
            try:
                self.timeouts.to_dict()
            except ValueError as exc:
                raise FunctionConfigError(f"function {self.id!r}: {exc}") from None

    def serialize_output(self, value: object) -> object:
        """The return value as stored: through the client's serializer when ``output_type`` is set."""
        if self.output_type is NOT_SET:
            return value
        return self.client.serializer.serialize(value, self.output_type)

    def deserialize_output(self, value: object) -> object:
        """A stored output (an invoke's result) as the function returned it."""
        if self.output_type is NOT_SET:
            return value
        return self.client.serializer.deserialize(value, self.output_type)

    @property
    def slug(self) -> str:
        """The app-qualified id Inngest uses on the wire: ``<app_id>-<id>``."""
        return f"{self.app_id}-{self.id}"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @property
    def event_names(self) -> list[str]:
        return [t.event for t in self.triggers if isinstance(t, TriggerEvent)]

    def config(self) -> dict[str, Any]:
        """The function's registration record (Inngest's config shape, plus stepq's backoff)."""
        return {
            "id": self.slug,
            "fn_id": self.id,
            "app_id": self.app_id,
            "name": self.name,
            "triggers": [t.to_dict() for t in self.triggers],
            "retries": self.retries,
            "cancel": [c.to_dict() for c in self.cancel],
            "timeouts": self.timeouts.to_dict() if self.timeouts else {},
            "backoff": self.backoff.to_dict(),
            "flow": self.flow,
        }


def normalize_triggers(trigger: Trigger | Sequence[Trigger] | None) -> tuple[Trigger, ...]:
    if trigger is None:
        return ()
    if isinstance(trigger, TriggerEvent | TriggerCron):
        return (trigger,)
    if isinstance(trigger, list | tuple):
        return tuple(trigger)
    raise FunctionConfigError(f"trigger must be a TriggerEvent, a TriggerCron or a list of them, got {trigger!r}")
