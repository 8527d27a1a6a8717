"""structlog set-up: readable lines on a terminal, JSON lines otherwise."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from stepq.runtime import routine_log


def configure(level: str | None = None) -> None:
    """Configure structlog (and stdlib logging, which arq uses) once per process; ValueError naming
    the variable when ``STEPQ_LOG_LEVEL`` or ``STEPQ_STEP_LOG_LEVEL`` is not a level."""
    numeric = level_number(level or os.environ.get("STEPQ_LOG_LEVEL") or "info", "STEPQ_LOG_LEVEL")
    routine_log.turn_on()
    step_log_level()  # a wrong STEPQ_STEP_LOG_LEVEL stops the command now, not at its first step
    # JSON lines for log collectors; colours only for a person at a terminal.
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer(serializer=ReusedEncoders())
    )
    shared: list[structlog.typing.Processor] = [structlog.processors.add_log_level, utc_timestamp, trace_ids]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() writes the line and its newline apart: two system calls per
        # line when stderr is unbuffered, and a worker logs a line per step).
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (arq, uvicorn) log through stdlib logging: render their lines the same way. arq logs
    # every job at INFO; stepq logs its own line per invocation, so arq speaks only of problems.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.getLogger("arq").setLevel(max(numeric, logging.WARNING))


def level_number(name: str, variable: str) -> int:
    """The ``logging`` level named ``name`` (any case); ValueError naming ``variable`` otherwise."""
    numeric = logging.getLevelName(name.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"{variable}: unknown log level {name!r}; use debug, info, warning or error")
    return numeric


def step_log_level() -> int:
    """The level of the line a worker writes per invocation (``STEPQ_STEP_LOG_LEVEL``, default info).

    That line (about 320 B) is most of what a busy worker logs: ``STEPQ_STEP_LOG_LEVEL=debug`` keeps
    it out of an info-level log while the worker's other lines (start, drain, Redis lost and back,
    errors) stay; ``STEPQ_LOG_LEVEL=debug`` brings it back."""
    return level_number(os.environ.get("STEPQ_STEP_LOG_LEVEL") or "info", "STEPQ_STEP_LOG_LEVEL")


#: What gives the current span's ``trace_id`` and ``span_id`` (set by stepq.workers.tracing when
#: tracing is on); None: lines carry no trace ids, at the cost of one check.
_trace_ids: Callable[[], dict[str, str]] | None = None


def set_trace_ids(source: Callable[[], dict[str, str]] | None) -> None:
    """Have every line logged while a span is current carry its ``trace_id`` and ``span_id``."""
    global _trace_ids
    _trace_ids = source


def trace_ids(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``trace_id`` and ``span_id`` of the current span, when tracing is on (ids given already stay)."""
    if _trace_ids is not None and "trace_id" not in event_dict:
        event_dict.update(_trace_ids())
    return event_dict


# A worker logs a line per step: the two processors below write exactly what structlog's
# ``TimeStamper(fmt="iso", utc=True)`` and ``JSONRenderer()`` write, for less work per line.

_SECOND: tuple[int, str] = (-1, "")


def utc_timestamp(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``timestamp``: now in UTC as ISO 8601 with microseconds (none when they are 0) and a Z, as
    ``TimeStamper(fmt="iso", utc=True)`` puts it; the date and time to the second are formatted once
    a second."""
    global _SECOND
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)  # floored to the microsecond, as datetime.now
    second, text = _SECOND
    if second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _SECOND = (seconds, text)
    micros = nanos // 1000
    event_dict["timestamp"] = f"{text}.{micros:06d}Z" if micros else f"{text}Z"
    return event_dict


class ReusedEncoders:
    """``json.dumps(obj, default=...)`` with one ``JSONEncoder`` per ``default`` instead of one per
    call: ``JSONRenderer``'s serializer."""

    def __init__(self) -> None:
        self._encoders: dict[Callable[[Any], Any] | None, json.JSONEncoder] = {}

    def __call__(self, obj: Any, **options: Any) -> str:
        default = options.pop("default", None)
        if options:
            return json.dumps(obj, default=default, **options)
        encoder = self._encoders.get(default)
        if encoder is None:
            encoder = self._encoders[default] = json.JSONEncoder(default=default)
        return encoder.encode(obj)
