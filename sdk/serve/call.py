"""The call request (``POST ?fnId=...``, protocol §2.3) read from its JSON body; errors name the field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import InvalidEventError
from ..event import Event
from .messages import Refusal

_EVENT_FIELDS = ("name", "data", "id", "ts", "v", "user")


@dataclasses.dataclass(slots=True)
class Call:
    """The fields of a call request that stepq uses."""

    run_id: str
    attempt: int
    disable_immediate_execution: bool
    max_attempts: int | None
    stack: list[str]
    steps: dict[str, Any]
    event: Any
    events: list[Any] | None
    use_api: bool


def malformed(message: str) -> Refusal:
    return Refusal(500, "malformed_request", f"malformed request body: {message}")


def parse_call(body: bytes) -> Call:
    """The call request's fields (protocol §2.3); errors name the field."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise malformed(f"not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise malformed("expected a JSON object")
    ctx = payload.get("ctx")
    if not isinstance(ctx, dict):
        raise malformed("ctx: expected an object")
    run_id = ctx.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise malformed("ctx.run_id: expected a non-empty string")
    attempt = ctx.get("attempt", 0)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise malformed(f"ctx.attempt: expected a non-negative integer, got {attempt!r}")
    disable = ctx.get("disable_immediate_execution", False)
    if not isinstance(disable, bool):
        raise malformed("ctx.disable_immediate_execution: expected a boolean")
    max_attempts = ctx.get("max_attempts")
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)):
        raise malformed(f"ctx.max_attempts: expected an integer, got {max_attempts!r}")
    stack_obj = ctx.get("stack") or {}
    stack = stack_obj.get("stack") if isinstance(stack_obj, dict) else None
    stack = stack or []
    if not isinstance(stack, list) or not all(isinstance(k, str) for k in stack):
        raise malformed("ctx.stack.stack: expected a list of step keys")
    use_api = payload.get("use_api") is True or ctx.get("use_api") is True
    steps = payload.get("steps")
    if steps is None:
        steps = {}
    if not isinstance(steps, dict):
        raise malformed("steps: expected an object of step keys to memoized values")
    events = payload.get("events")
    if events is not None and not isinstance(events, list):
        raise malformed("events: expected a list")
    event = payload.get("event")
    if not use_api and event is None and not events:
        raise malformed("event: missing")
    return Call(
        run_id=run_id,
        attempt=attempt,
        disable_immediate_execution=disable,
        max_attempts=max_attempts if isinstance(max_attempts, int) and max_attempts > 0 else None,
        stack=stack,
        steps=steps,
        event=event,
        events=events,
        use_api=use_api,
    )


def wire_event(raw: Any, where: str) -> Event:
    """An event from the wire; fields stepq does not model (``meta``...) are dropped."""
    if isinstance(raw, dict):
        raw = {k: raw[k] for k in _EVENT_FIELDS if k in raw}
    try:
        return Event.from_dict(raw, where=where)
    except InvalidEventError as exc:
        raise malformed(str(exc)) from None
