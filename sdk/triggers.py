"""What starts a function: an event (optionally filtered) or a cron schedule."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import FunctionConfigError
from .expressions import Expression, ExpressionError, compile_expression

#: The variables a trigger's expression can use: the event that would start the run.
TRIGGER_VARIABLES = frozenset({"event"})


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerEvent:
    """Start a run for every event named ``event`` (whose ``expression`` holds, when given).

    ``expression`` is CEL over ``event`` (the event as the function would see it: ``name``,
    ``data``, ``id``, ``ts``, ``user``), e.g. ``"event.data.plan == 'pro'"``. It is compiled here,
    so an invalid one fails at definition. An event for which it is not ``true`` (a missing field,
    an evaluation error) starts no run.
    """

    event: str
    expression: str | None = None
    _compiled: Expression | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise FunctionConfigError("TriggerEvent.event: needs a non-empty event name")
        if self.expression is not None and not isinstance(self.expression, str):
            raise FunctionConfigError(
                f"TriggerEvent(event={self.event!r}).expression: expected a string, "
                f"got {type(self.expression).__name__}"
            )
        if self.expression and self.expression.strip():
            try:
                compiled = compile_expression(self.expression, variables=TRIGGER_VARIABLES)
            except ExpressionError as exc:
                raise ExpressionError(f"TriggerEvent(event={self.event!r}).expression: {exc}") from None
            object.__setattr__(self, "_compiled", compiled)

    @property
    def compiled(self) -> Expression | None:
        """The compiled expression; None when the trigger has no filter."""
        return self._compiled

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether an event (its dict shape) passes this trigger's filter; always True without one."""
        return self._compiled is None or self._compiled.matches(event=event)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event}
        if self.expression and self.expression.strip():
            out["expression"] = self.expression
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerCron:
    """Start a run on a cron schedule, e.g. ``"*/5 * * * *"`` or ``"TZ=Europe/Paris 0 9 * * *"``."""

    cron: str
    #: inngest-py's random delay of each tick; refused until stepq's scheduler applies it.
    jitter: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not self.cron.strip():
            raise FunctionConfigError("TriggerCron.cron: needs a cron expression")
        if self.jitter is not None:
            raise FunctionConfigError(
                f"TriggerCron(cron={self.cron!r}).jitter: not supported by stepq yet (a later release); "
                "ticks start on time"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"cron": self.cron}


Trigger = TriggerEvent | TriggerCron
