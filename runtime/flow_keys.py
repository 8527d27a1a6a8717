"""The values of a function's flow-control expressions for one event: the key of a concurrency
limit, a throttle, a rate limit, a debounce, a batch or a singleton, the idempotency key, and a
run's priority.

A key expression is CEL over ``event`` (Inngest's rule), evaluated once when the run is created
and kept with the run. Its value names a Redis key: :func:`key_of` gives a short fixed-size digest
of the value (values are user data of any size) and the value as shown to people (``stepq run``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import structlog

from stepq.expressions import Bindings, ExpressionError, ExpressionEvalError, compile_expression
from stepq.triggers import TRIGGER_VARIABLES

log = structlog.get_logger("stepq.flow")

#: Shown values are cut to this many characters.
SHOWN_MAX = 80
#: Priority factors are clamped to this many seconds either way (Inngest's documented range).
PRIORITY_MAX_S = 600


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    """One evaluated key: ``digest`` names Redis keys, ``shown`` is the value for people."""

    digest: str
    shown: str


#: The key of a limit that has no key expression: one per function (or per scope).
WHOLE = KeyValue("", "")


def _canonical(value: Any) -> str:
    """The value as canonical JSON: the same value always gives the same key, whatever its
    origin (a string "42" and a number 42 stay distinct, as in Inngest's CEL keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def evaluate(expression: str, bindings: Bindings) -> Any:
    """The value of ``expression`` for ``bindings`` (``event``), or None when it cannot be
    evaluated (a field the event lacks...): Inngest's evaluation treats such a key as null too.
    The expression compiled when the function was registered; a failure here is logged."""
    try:
        return compile_expression(expression, variables=TRIGGER_VARIABLES).evaluate(bindings)
    except (ExpressionError, ExpressionEvalError) as exc:  # an event without the field: no crash of the send
        log.debug("flow.key_unevaluated", expression=expression, error=str(exc))
        return None


def key_of(expression: str | None, bindings: Bindings) -> KeyValue:
    """The key a limit with key ``expression`` gives this event (:data:`WHOLE` for none)."""
    if expression is None:
        return WHOLE
    text = _canonical(evaluate(expression, bindings))
    digest = hashlib.blake2b(text.encode(), digest_size=10).hexdigest()
    shown = text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 1] + "…"
    return KeyValue(digest, shown)


def priority_of(expression: str, bindings: Bindings) -> int:
    """A run's priority factor in seconds: the expression's integer value clamped to ±600; any
    other value (a float, a string, an error) is 0, as Inngest treats it."""
    value = evaluate(expression, bindings)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(-PRIORITY_MAX_S, min(PRIORITY_MAX_S, value))
