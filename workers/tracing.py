"""OpenTelemetry traces of runs, made by the workers (``pip install stepq[otel]``).

One trace per run. Its root is the run's span (``run <function>``), from the run's creation to its
end, emitted by the worker that ends the run. Under it, one span per invocation (an attempt of a
step, or of the function between steps: ``step <id>`` / ``function <slug>``), current while the
function runs (so the app's own spans nest in it), with its outcome: status OK or ERROR, the error as
an ``exception`` event, ``retry scheduled``, ``duplicate refused`` (another delivery's write won),
and the sleeps, waits, invokes and parallel steps it planned as events (``sleep`` until, ``wait for
event`` with its condition and timeout). A timer that resolves a step (a wait or invoke that timed
out, a sleep in a parallel group) is a ``timer`` span; an invoke is an ``invoke <function>`` span,
parent of the invoked run's own root span, so a child run lies in its parent's trace. (An event
that resolves a wait is a ``wait matched`` span, made by the process that delivered it:
``stepq.runtime.tracing``.)

Each invocation may run in another worker process, so a run's trace context is derivable from the
run alone (``stepq.runtime.tracing``): the run's span id is a hash of its id, and so is its trace
id unless the run continues a trace (the sender's span, kept in the run's record at creation as a
W3C ``traceparent``; read once per run per worker). The spans whose ids others derive (a run's
root, an invoke's) get them through a wrapper of this tracer's id generator.

Not traced: a run cancelled (by the API, an event, its timeouts) or failed by an internal error
gets no root span (its other spans keep its trace id and parent).

When is it on: ``STEPQ_TRACING=otlp`` (or ``on``), or, when unset, as soon as OpenTelemetry is
configured: ``OTEL_TRACES_EXPORTER`` (other than ``none``) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, or the app set its own SDK ``TracerProvider`` before
the worker started (then the worker uses it, as it is). ``STEPQ_TRACING=off`` turns it off. The
provider the worker makes reads the standard ``OTEL_*`` settings (service name, resource attributes,
sampler, batch sizes, endpoint, headers). ``STEPQ_TRACING_FILE=<path>`` writes the spans as JSON
lines to that file instead (for debugging, and the tests): no collector needed.

Off (or without the extra installed), the executor's hooks return at once and nothing imports
OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

import structlog

from stepq.engine import ExecutionResult, FunctionFailed, StepsReported
from stepq.runtime.jobs import JobKind, JobSpec
from stepq.runtime.plan import Commit as CommitWrite
from stepq.runtime.plan import FanOut, Finish, Plan, Resolve, Sleep
from stepq.runtime.plan import Retry as RetryWrite
from stepq.runtime.run_status import RunStatus
from stepq.runtime.store import LoadedRun
from stepq.runtime.tracing import SCOPE, RunContext, read_run_context, remote_parent, step_span_id
from stepq.tracing import OFF_VALUES, disabled_by_env, format_traceparent

from . import logs

log = structlog.get_logger("stepq.tracing")

#: Runs whose trace context a worker keeps at hand.
CACHED_RUNS = 4096
_ON_VALUES = frozenset({"otlp", "on", "1", "true", "yes"})
#: A span id the next span made in this context must take (see ``_ForcedIds``).
_FORCED_SPAN_ID: contextvars.ContextVar[int] = contextvars.ContextVar("stepq_forced_span_id", default=0)
#: ... and the trace id it must take if it has no parent (the root of a run that starts a trace).
_FORCED_TRACE_ID: contextvars.ContextVar[int] = contextvars.ContextVar("stepq_forced_trace_id", default=0)


def requested() -> bool:
    """Whether the environment asks for tracing (see the module's docstring); the app's own
    provider is checked by ``setup``."""
    if disabled_by_env():
        return False
    switch = (os.environ.get("STEPQ_TRACING") or "").strip().lower()
    if switch in _ON_VALUES:
        return True
    if switch and switch not in OFF_VALUES:
        raise ValueError(f"STEPQ_TRACING={switch!r}: use otlp (or on) to trace, off not to")
    exporter = (os.environ.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    return bool(
        (exporter and exporter != "none")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("STEPQ_TRACING_FILE")
    )


def setup(redis: Any, *, service_name: str = "stepq-worker") -> WorkerTracing:
    """The worker's tracing: active when asked for and OpenTelemetry is installed, else inert."""
    if disabled_by_env():
        return WorkerTracing()
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        if requested():
            log.warning("tracing.unavailable", detail="OpenTelemetry is not installed: pip install 'stepq[otel]'")
        return WorkerTracing()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        if not requested():
            return WorkerTracing()
        provider = install_provider(service_name)
    tracer = provider.get_tracer(SCOPE)
    if not hasattr(tracer, "id_generator"):
        log.warning("tracing.unavailable", detail="the app's tracer provider makes no SDK tracers")
        return WorkerTracing()
    tracer.id_generator = _ForcedIds(tracer.id_generator)
    logs.set_trace_ids(_current_ids)
    log.info("tracing.on", provider=type(provider).__name__)
    return WorkerTracing(tracer, redis)


def setup_api(service_name: str = "stepq-api") -> bool:
    """For ``stepq api``: install a provider from the environment when tracing is asked for (and no
    provider is set), so that the events it delivers to waiting runs make ``wait matched`` spans."""
    if not requested():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("tracing.unavailable", detail="OpenTelemetry is not installed: pip install 'stepq[otel]'")
        return False
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        install_provider(service_name)
    return True


def install_provider(service_name: str) -> Any:
    """Make a TracerProvider from the OTEL_* settings (sampler, resource, exporter and its settings)
    and set it as the process's (``stepq api`` calls this when tracing is asked for: the events it
    delivers to waiting runs make ``wait matched`` spans)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over this default (Resource.create reads them)
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))  # the sampler: OTEL_TRACES_SAMPLER
    path = os.environ.get("STEPQ_TRACING_FILE")
    if path:
        # written as each span ends: a test reads the file while the worker runs
        provider.add_span_processor(SimpleSpanProcessor(cast("SpanExporter", JsonLinesExporter(path))))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter_from_env()))
    trace.set_tracer_provider(provider)
    return provider


def _exporter_from_env() -> Any:
    exporter = (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if exporter != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: stepq's workers export with otlp or console")
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc installed"
            ) from None
        return GrpcExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf or grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*


class JsonLinesExporter:
    """A span exporter appending each span to a file as one JSON line (``ReadableSpan.to_json``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(lines)  # one write: lines of several processes do not interleave
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _ForcedIds:
    """The tracer's id generator, except that a span made while ``_FORCED_SPAN_ID`` is set takes it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        return _FORCED_SPAN_ID.get() or int(self.inner.generate_span_id())

    def generate_trace_id(self) -> int:
        return _FORCED_TRACE_ID.get() or int(self.inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        return bool(getattr(self.inner, "is_trace_id_random", lambda: False)())


def _current_ids() -> dict[str, str]:
    """The current span's ids, for log lines (``logs.set_trace_ids``)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


class RunTrace:
    """A run's place in its trace, as OpenTelemetry contexts: the parent of the spans made for the
    run (its root, remote), and the parent of the root itself (None: the root starts the trace)."""

    __slots__ = ("context", "root_parent", "run")

    def __init__(self, run: RunContext, context: Any, root_parent: Any) -> None:
        self.run = run
        self.context = context
        self.root_parent = root_parent


_NO_IDS: dict[str, str] = {}
_NOT_TRACED = contextlib.nullcontext()


class _Current:
    """The span of an OpenTelemetry context current within a ``with`` (``use_span`` without its
    exception handling: the executor records failures itself)."""

    __slots__ = ("context", "token")

    def __init__(self, context: Any) -> None:
        self.context = context
        self.token: Any = None

    def __enter__(self) -> None:
        from opentelemetry import context

        self.token = context.attach(self.context)

    def __exit__(self, *exc: object) -> None:
        from opentelemetry import context

        context.detach(self.token)


class WorkerTracing:
    """The executor's hooks. Without a tracer (tracing off), each returns at once."""

    def __init__(self, tracer: Any = None, redis: Any = None) -> None:
        self.tracer = tracer
        self.redis = redis
        self.enabled = tracer is not None
        self._runs: OrderedDict[str, RunTrace] = OrderedDict()
        if tracer is not None:
            from opentelemetry import trace
            from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

            self._trace, self._span_context, self._flags = trace, SpanContext, TraceFlags
            self._status, self._code, self._non_recording = Status, StatusCode, NonRecordingSpan
            from opentelemetry.context import Context

            self._empty = Context

    # -- the run's trace -------------------------------------------------------------------------

    async def run_trace(self, run_id: str) -> RunTrace:
        """The run's trace context: read once from its record (the traceparent it continues), then kept."""
        found = self._runs.get(run_id)
        if found is not None:
            return found
        run = await read_run_context(self.redis, run_id)
        root_parent = None
        if run.parent is not None:
            trace_id, span_id, flags = run.parent
            span_context = self._span_context(trace_id, span_id, is_remote=True, trace_flags=self._flags(flags))
            root_parent = self._trace.set_span_in_context(self._non_recording(span_context))
        found = self._runs[run_id] = RunTrace(run, remote_parent(run, self.tracer.sampler), root_parent)
        while len(self._runs) > CACHED_RUNS:
            self._runs.popitem(last=False)
        return found

    def _forced(self, span_id: int, name: str, parent: Any, trace_id: int = 0, **options: Any) -> Any:
        """A span with the id ``span_id`` (one that other processes derive); without a ``parent``,
        the root of the trace ``trace_id``."""
        token, root = _FORCED_SPAN_ID.set(span_id), _FORCED_TRACE_ID.set(trace_id)
        try:
            # an empty context, not None (which means the current one): the root has no parent
            return self.tracer.start_span(name, context=parent if parent is not None else self._empty(), **options)
        finally:
            _FORCED_SPAN_ID.reset(token)
            _FORCED_TRACE_ID.reset(root)

    # -- one invocation --------------------------------------------------------------------------

    async def attempt_started(self, job: JobSpec, run: LoadedRun) -> Any:
        """The span of this invocation, started (None when tracing is off)."""
        if self.tracer is None:
            return None
        where = self._runs.get(run.run_id) or await self.run_trace(run.run_id)
        attributes = {
            "stepq.run_id": run.run_id,
            "stepq.function": run.fn_slug,
            "stepq.attempt": job.attempt,
            "stepq.job": job.kind.value,
        }
        return self.tracer.start_span(f"function {run.fn_slug}", context=where.context, attributes=attributes)

    def current(self, span: Any) -> contextlib.AbstractContextManager[Any]:
        """Make ``span`` current while the function runs (its own spans nest in it)."""
        if span is None:
            return _NOT_TRACED
        return _Current(self._trace.set_span_in_context(span))

    def log_ids(self, span: Any) -> dict[str, str]:
        """``trace_id`` and ``span_id`` for the invocation's log line (none when tracing is off)."""
        if span is None:
            return _NO_IDS
        context = span.get_span_context()
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

    def attempt_ended(self, span: Any, plan: Plan, outcome: str, result: ExecutionResult) -> None:
        """End the invocation's span with what came of it: ``outcome`` as the log line says it."""
        if span is None:
            return
        write = plan.write
        if plan.label.startswith("step-") and plan.step:
            span.update_name(f"step {plan.step}")
        span.set_attributes(
            {"stepq.outcome": outcome, "stepq.step": plan.step} if plan.step else {"stepq.outcome": outcome}
        )
        error = _error_of(result)
        failed = isinstance(write, RetryWrite) or (isinstance(write, Finish) and write.status == RunStatus.FAILED)
        if isinstance(write, CommitWrite | Resolve) and isinstance(write.value, dict) and "error" in write.value:
            failed = True
        if failed:
            if error is not None:
                span.add_event("exception", _exception_attributes(error))
            message = f"{(error or {}).get('name', 'Error')}: {(error or {}).get('message', '')}"
            span.set_status(self._status(self._code.ERROR, message[:500]))
        elif "-refused:" not in outcome:
            span.set_status(self._status(self._code.OK))
        if isinstance(write, RetryWrite):
            span.add_event("retry scheduled", {"stepq.retry.at": _iso(write.due_ms), "stepq.attempt": write.attempts})
        if "-refused:" in outcome:
            reason = outcome.rsplit("-refused:", 1)[1]
            span.set_attribute("stepq.refused", reason)
            span.add_event("duplicate refused" if reason == "duplicate" else "write refused", {"reason": reason})
        elif isinstance(write, Sleep):
            span.add_event("sleep", {"stepq.step": write.name, "stepq.sleep.until": _iso(write.due_ms)})
        elif isinstance(write, FanOut):
            _planned_events(span, write)
        span.end()

    # -- runs and steps other jobs resolve ---------------------------------------------------------

    async def run_ended(self, run: LoadedRun, end: Finish) -> None:
        """Emit the run's root span, from its creation to now (the run ended)."""
        if self.tracer is None:
            return
        where = await self.run_trace(run.run_id)
        span = self._forced(
            where.run.span_id,
            f"run {run.fn_slug}",
            where.root_parent,
            where.run.trace_id,
            attributes={"stepq.run_id": run.run_id, "stepq.function": run.fn_slug, "stepq.status": str(end.status)},
            start_time=run.created_ms * 1_000_000 if run.created_ms else None,
        )
        if end.status == RunStatus.FAILED:
            error = end.error if isinstance(end.error, dict) else {}
            span.add_event("exception", _exception_attributes(error))
            span.set_status(self._status(self._code.ERROR, str(error.get("message", ""))[:500]))
        else:
            span.set_status(self._status(self._code.OK))
        span.end()
        self._runs.pop(run.run_id, None)

    async def timer_fired(self, job: JobSpec, outcome: str) -> None:
        """A ``timer`` span: a pending step's timer offered its value (a timeout, a sleep's end)."""
        if self.tracer is None or job.step_key is None:
            return
        where = await self.run_trace(job.run_id)
        invoke = isinstance(job.value, dict) and "error" in job.value
        span = self.tracer.start_span(
            "timer",
            context=where.context,
            attributes={"stepq.run_id": job.run_id, "stepq.step_key": job.step_key, "stepq.outcome": outcome},
        )
        if outcome == "ok" or outcome == "joined":
            span.add_event("invoke timed out" if invoke else "timed out (or sleep ended)")
        span.end()

    async def invoke_started(self, job: JobSpec, function: str, child_run_id: str) -> str:
        """Emit an invoke step's span; returns the traceparent the invoked run continues ('' when off)."""
        if self.tracer is None or job.step_key is None:
            return ""
        where = await self.run_trace(job.run_id)
        span_id = step_span_id(job.run_id, job.step_key)
        span = self._forced(
            span_id,
            f"invoke {function}",
            where.context,
            attributes={
                "stepq.run_id": job.run_id,
                "stepq.step_key": job.step_key,
                "stepq.invoke.function": function,
                "stepq.invoke.run_id": child_run_id,
            },
        )
        span.end()
        return format_traceparent(where.run.trace_id, span_id, int(span.get_span_context().trace_flags))


def _error_of(result: ExecutionResult) -> dict[str, Any] | None:
    if isinstance(result, FunctionFailed):
        return result.error
    if isinstance(result, StepsReported) and len(result.opcodes) == 1 and result.opcodes[0].error:
        return result.opcodes[0].error
    return None


def _exception_attributes(error: dict[str, Any]) -> dict[str, str]:
    """An error memo as OpenTelemetry's ``exception`` event puts it."""
    return {
        "exception.type": str(error.get("name") or "Error"),
        "exception.message": str(error.get("message") or ""),
        "exception.stacktrace": str(error.get("stack") or ""),
    }


def _planned_events(span: Any, fan_out: FanOut) -> None:
    """One event per step the invocation planned: sleeps, waits, invokes, parallel steps."""
    waits = {record.key: record for record in fan_out.waits}
    for step in fan_out.steps:
        attributes: dict[str, Any] = {"stepq.step": step.name, "stepq.step_key": step.key}
        if step.key in waits:
            record = waits[step.key]
            attributes["stepq.wait.event"] = record.event
            if record.expression:
                attributes["stepq.wait.if"] = str(record.expression)
            attributes["stepq.wait.timeout_at"] = _iso(step.due_ms)
            span.add_event("wait for event", attributes)
        elif step.start is not None:
            value = step.start.value if isinstance(step.start.value, dict) else {}
            attributes["stepq.invoke.function"] = str(value.get("function_id", ""))
            attributes["stepq.invoke.timeout_at"] = _iso(step.due_ms)
            span.add_event("invoke", attributes)
        elif step.job is not None and step.job.kind is JobKind.TIMER:
            attributes["stepq.sleep.until"] = _iso(step.due_ms)
            span.add_event("sleep", attributes)
        else:
            span.add_event("step planned", attributes)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


__all__ = ["JsonLinesExporter", "WorkerTracing", "requested", "setup"]
