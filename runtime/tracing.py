"""A run's place in its trace, which any process derives from the run alone, and the one span the
runtime makes itself: ``wait matched``, when an event resolves a run's ``wait_for_event``.

A run's root span id is a hash of its id, and so is its trace id unless the run continues a trace:
the sender's span (or, for an invoked run, its parent's invoke step), kept in the run's record at
creation as a W3C traceparent (``store.TRACE_FIELD``). The workers' spans (stepq.workers.tracing)
and this module's use the same derivation, so no process has to hand a trace context to another.

OpenTelemetry is imported only when a process traces: the ``wait matched`` span is made when the
process that delivered the event has an SDK tracer provider (the worker's, ``stepq api``'s when
tracing is on, or an app's own when it sends through Redis); otherwise nothing is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import structlog

from stepq.tracing import parse_traceparent

from . import keys
from .store import TRACE_FIELD

log = structlog.get_logger("stepq.tracing")

#: The instrumentation scope of stepq's spans.
SCOPE = "stepq"


def _derived(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def run_span_id(run_id: str) -> int:
    """The span id of a run's root span."""
    return _derived("stepq.run", run_id)


def step_span_id(run_id: str, step_key: str) -> int:
    """The span id of an invoke step's span (the parent of the invoked run's root)."""
    return _derived("stepq.step", run_id, step_key)


def derived_trace_id(run_id: str) -> int:
    """The trace id of a run that continues no trace."""
    digest = hashlib.sha256(f"stepq.trace\x1f{run_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1


@dataclasses.dataclass(frozen=True, slots=True)
class RunContext:
    """Where a run's spans go: its trace, its root span, and the span that root continues."""

    trace_id: int
    #: The run's root span.
    span_id: int
    #: ``(trace_id, span_id, flags)`` of the span the run continues; None: the run starts a trace.
    parent: tuple[int, int, int] | None


def run_context(run_id: str, stored: Any) -> RunContext:
    """The run's context from the traceparent its record keeps (``stored``: bytes, str or None)."""
    text = stored.decode(errors="replace") if isinstance(stored, bytes) else stored
    parent = parse_traceparent(text if isinstance(text, str) else None)
    trace_id = parent[0] if parent is not None else derived_trace_id(run_id)
    return RunContext(trace_id, run_span_id(run_id), parent)


async def read_run_context(redis: Any, run_id: str) -> RunContext:
    """``run_context`` of the run as Redis holds it (a run that cannot be read starts a trace: a
    trace is not worth failing the caller's work)."""
    stored: Any = None
    try:
        stored = await redis.hget(keys.run(run_id), TRACE_FIELD)
    except Exception as exc:
        log.debug("tracing.read_failed", run_id=run_id, error=f"{type(exc).__name__}: {exc}")
    return run_context(run_id, stored)


def sampled(context: RunContext, sampler: Any) -> bool:
    """Whether the run's spans are recorded: the sender's decision when it continues one, else the
    sampler's, taken on the run's trace id (so that every process decides alike with a
    trace-id-ratio sampler)."""
    if context.parent is not None:
        return bool(context.parent[2] & 1)
    return bool(sampler.should_sample(None, context.trace_id, "run").decision.is_sampled())


def remote_parent(context: RunContext, sampler: Any, span_id: int | None = None) -> Any:
    """An OpenTelemetry context whose current span is the run's root (or ``span_id`` in its trace),
    as a remote span: the parent of the spans made for the run."""
    from opentelemetry import trace

    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled(context, sampler) else trace.TraceFlags.DEFAULT)
    span_context = trace.SpanContext(context.trace_id, span_id or context.span_id, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))


def _sdk_tracer() -> Any:
    """stepq's tracer from this process's SDK provider, or None when the process does not trace."""
    from stepq.tracing import otel_trace

    trace = otel_trace()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if not hasattr(provider, "sampler") or not hasattr(provider, "add_span_processor"):
        return None  # the API's default (a proxy or no-op provider): nobody configured tracing here
    return provider.get_tracer(SCOPE)


async def wait_matched(redis: Any, run_id: str, step_key: str, event: dict[str, Any], outcome: str) -> None:
    """A ``wait matched`` span under the waiting run's root: which event resolved which wait."""
    tracer = _sdk_tracer()
    if tracer is None:
        return
    context = await read_run_context(redis, run_id)
    attributes = {
        "stepq.run_id": run_id,
        "stepq.step_key": step_key,
        "stepq.wait.event": str(event.get("name", "")),
        "stepq.wait.event_id": str(event.get("id", "")),
        "stepq.outcome": outcome,
    }
    span = tracer.start_span("wait matched", context=remote_parent(context, tracer.sampler), attributes=attributes)
    span.end()
