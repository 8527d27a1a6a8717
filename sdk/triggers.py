"""What starts a function: an event (optionally filtered) or a cron schedule."""

from __future__ import annotations

import dataclasses
from typing import Any

from sdk.errors import FunctionConfigError


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerEvent:
    """Start a run for every event named ``event`` (whose ``expression`` holds, when given)."""

    event: str
    expression: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise FunctionConfigError("TriggerEvent.event: needs a non-empty event name")
        if self.expression is not None and not isinstance(self.expression, str):
            raise FunctionConfigError("TriggerEvent.expression: expected a string")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event}
        if self.expression:
            out["expression"] = self.expression
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerCron:
    """Start a run on a cron schedule, e.g. ``"*/5 * * * *"`` or ``"TZ=Europe/Paris 0 9 * * *"``."""

    cron: str

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not self.cron.strip():
            raise FunctionConfigError("TriggerCron.cron: needs a cron expression")

    def to_dict(self) -> dict[str, Any]:
        return {"cron": self.cron}


Trigger = TriggerEvent | TriggerCron
