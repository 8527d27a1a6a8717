"""W3C trace context on the send side: ``Client.send`` carries the sender's current span into its events.

The trace context travels as Inngest carries it: a ``traceparent`` header on ``POST /e/{key}`` (and
the same text handed to ingest by the Redis transport). The runtime keeps it with each run the send
starts, so that the run's spans continue the sender's trace (see ``stepq.workers.tracing``).

OpenTelemetry is optional (``pip install stepq[otel]``): without it, or with ``STEPQ_TRACING=off``,
nothing is carried and nothing here imports it.
"""

from __future__ import annotations

import os
import re
from typing import Any

#: ``version-traceid-spanid-flags`` (W3C Trace Context, level 1), lower-case hex.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
#: Values of STEPQ_TRACING that turn tracing off in every stepq process.
OFF_VALUES = frozenset({"off", "0", "false", "no", "none"})

_api: Any = None  # opentelemetry.trace once imported; False when it is not installed or disabled


def disabled_by_env() -> bool:
    """``STEPQ_TRACING=off`` (or OpenTelemetry's own ``OTEL_SDK_DISABLED=true``)."""
    return (os.environ.get("STEPQ_TRACING") or "").strip().lower() in OFF_VALUES or (
        os.environ.get("OTEL_SDK_DISABLED") or ""
    ).strip().lower() == "true"


def otel_trace() -> Any:
    """``opentelemetry.trace``, or None when it is not importable or tracing is turned off."""
    global _api
    if _api is None:
        _api = False
        if not disabled_by_env():
            try:
                from opentelemetry import trace
            except ImportError:
                pass
            else:
                _api = trace
    return _api or None


def current_traceparent() -> str:
    """The ``traceparent`` of the span current in this context ('' when there is none, or no OpenTelemetry)."""
    trace = otel_trace()
    if trace is None:
        return ""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return format_traceparent(context.trace_id, context.span_id, int(context.trace_flags))


def trace_headers() -> dict[str, str]:
    """The HTTP headers that carry the current span to the event API (none when there is none)."""
    traceparent = current_traceparent()
    return {"traceparent": traceparent} if traceparent else {}


def format_traceparent(trace_id: int, span_id: int, flags: int = 1) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_traceparent(text: str | None) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, flags)`` of a ``traceparent`` header, or None when it is not a valid one
    (the W3C rule: an invalid header is ignored, never an error)."""
    if not text or len(text) > 512:
        return None
    found = _TRACEPARENT.match(text.strip())
    if found is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(flags_hex, 16)


def normalized_traceparent(text: str | None) -> str:
    """A valid ``traceparent`` as stepq stores it (version 00), or '' for anything else."""
    parsed = parse_traceparent(text)
    return format_traceparent(*parsed) if parsed is not None else ""
