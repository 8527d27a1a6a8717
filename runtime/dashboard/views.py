"""Pure formatting for the dashboard's pages: times, durations, JSON, memo values and the geometry
of the timeline waterfall. No I/O here: everything is tested without Redis or a server."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import Any

#: The encryption middleware's marker (stepq.encryption.ENCRYPTION_MARKER); spelled here so that the
#: dashboard does not import PyNaCl, an optional dependency.
ENCRYPTION_MARKER = "__ENCRYPTED__"
#: JSON longer than this is cut in list views (a run page shows the whole value).
SHORT_JSON_CHARS = 160


def clock(ms: int | None) -> str:
    """An epoch-milliseconds time as UTC ``2026-11-30 10:04:19.123``; ``-`` for none."""
    if ms is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def iso(ms: int | None) -> str:
    """An epoch-milliseconds time as ISO 8601 UTC (for ``<time datetime=...>``); empty for none."""
    if ms is None:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).isoformat(timespec="milliseconds")


def duration(ms: int | float | None) -> str:
    """A duration for people: ``850 ms``, ``2.4 s``, ``3 min 05 s``, ``2 h 07 min``, ``3 d 4 h``."""
    if ms is None:
        return "-"
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86_400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86_400} d {seconds % 86_400 // 3600} h"


def ago(ms: int | None, now_ms: int) -> str:
    """How long before ``now_ms`` (``3.2 s ago``), or after it (``in 5 min 00 s``)."""
    if ms is None:
        return "-"
    if ms > now_ms:
        return f"in {duration(ms - now_ms)}"
    return f"{duration(now_ms - ms)} ago"


def pretty_json(value: Any) -> str:
    """Indented JSON for a ``<pre>`` (escaped by the template, never marked safe)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
    except (ValueError, RecursionError):  # a cycle cannot come from JSON, but be safe
        return repr(value)


def short_json(value: Any, limit: int = SHORT_JSON_CHARS) -> str:
    """One-line JSON, cut to ``limit`` characters with an ellipsis."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_encrypted(value: Any) -> bool:
    """Whether a value is an encryption envelope (``{"__ENCRYPTED__": true, ...}``)."""
    return isinstance(value, dict) and value.get(ENCRYPTION_MARKER) is True


@dataclasses.dataclass(frozen=True, slots=True)
class Memo:
    """A memoized step value as a page shows it."""

    kind: str  # "data", "error", "encrypted", "null" or "event"
    text: str  # pretty JSON of what to show (empty for "encrypted" and "null")


def memo_view(value: Any) -> Memo:
    """A memo as the page shows it: ``{"data": v}`` shows v (or "encrypted" when v is an envelope),
    ``{"error": e}`` shows e, ``None`` a finished sleep or timed-out wait, else (a matched wait's
    event) the value itself."""
    if value is None:
        return Memo("null", "")
    if isinstance(value, dict) and set(value) == {"data"}:
        data = value["data"]
        return Memo("encrypted", "") if is_encrypted(data) else Memo("data", pretty_json(data))
    if isinstance(value, dict) and "error" in value and set(value) <= {"error", "data"}:
        return Memo("error", pretty_json(value["error"]))
    if is_encrypted(value):
        return Memo("encrypted", "")
    return Memo("event" if isinstance(value, dict) and "name" in value else "data", pretty_json(value))


def error_text(error: Any) -> str:
    """An error record (``{"name", "message", "stack"}``, or text) as ``Name: message``."""
    if error is None:
        return ""
    if isinstance(error, dict):
        name, message = error.get("name"), error.get("message")
        if name or message:
            return f"{name or 'Error'}: {message or ''}".rstrip(": ")
        return short_json(error)
    return str(error)


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """A time span to draw: ``start_ms`` to ``end_ms`` (None: still going, drawn up to now)."""

    start_ms: int
    end_ms: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Bar:
    """Where a span sits on the waterfall, in percent of its width (``left`` + ``width`` <= 100)."""

    left: float
    width: float
    open: bool  # still going


#: The narrowest bar drawn, in percent, so that a 1 ms step stays visible on an hour-long run.
MIN_BAR_PERCENT = 0.4


@dataclasses.dataclass(frozen=True, slots=True)
class Scale:
    """The waterfall's time axis: ``origin_ms`` at the left edge, ``span_ms`` across."""

    origin_ms: int
    span_ms: int

    @classmethod
    def of(cls, spans: Sequence[Span], now_ms: int, *, origin_ms: int | None = None) -> Scale:
        """The axis covering every span (an open span runs to ``now_ms``), from ``origin_ms`` (the
        run's start) or the earliest span."""
        starts = [s.start_ms for s in spans]
        ends = [s.end_ms if s.end_ms is not None else max(now_ms, s.start_ms) for s in spans]
        origin = origin_ms if origin_ms is not None else min(starts, default=now_ms)
        origin = min([origin, *starts])
        end = max([origin + 1, *ends])
        return cls(origin, end - origin)

    def bar(self, span: Span, now_ms: int) -> Bar:
        """The bar of ``span`` on this axis, clamped to the axis and at least ``MIN_BAR_PERCENT`` wide."""
        end = span.end_ms if span.end_ms is not None else max(now_ms, span.start_ms)
        left = min(100.0, max(0.0, (span.start_ms - self.origin_ms) * 100 / self.span_ms))
        width = max(MIN_BAR_PERCENT, (end - span.start_ms) * 100 / self.span_ms)
        left = min(left, 100.0 - MIN_BAR_PERCENT)
        width = min(width, 100.0 - left)
        return Bar(round(left, 3), round(width, 3), span.end_ms is None)

    def ticks(self, count: int = 4) -> list[tuple[float, str]]:
        """Axis labels: (percent, offset from the origin as a duration), ``count`` + 1 of them."""
        return [(i * 100 / count, "+" + duration(self.span_ms * i / count)) for i in range(count + 1)]


def status_class(status: str) -> str:
    """The CSS class of a status badge (``st-completed``...); unknown statuses get ``st-other``."""
    known = {
        "queued",
        "running",
        "sleeping",
        "waiting",
        "completed",
        "failed",
        "cancelled",
        "skipped",
        "ok",
        "error",
        "pending",
        "timed_out",
        "matched",
        "retrying",
        "duplicate",
    }
    return f"st-{status}" if status in known else "st-other"


def page_numbers(total: int, capped: bool) -> str:
    """A count for people: ``1,234`` or ``10,000+`` when counting stopped at a cap."""
    return f"{total:,}{'+' if capped else ''}"


@dataclasses.dataclass(slots=True)
class AttemptRow:
    """One attempt of a step: when it ran, how it ended, its error."""

    number: int
    start_ms: int | None
    end_ms: int | None
    outcome: str
    error: str = ""
    bar: Bar | None = None


@dataclasses.dataclass(slots=True)
class Row:
    """One line of the waterfall: a step, a sleep, a wait, an invoke, or time spent on flow control."""

    key: str
    name: str
    kind: str  # "step", "sleep", "wait", "invoke", "flow"
    status: str
    start_ms: int | None
    end_ms: int | None
    attempts: list[AttemptRow] = dataclasses.field(default_factory=list)
    #: Lines of detail for people ("wakes at ...", "waits for order/paid if ...").
    details: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    #: Times the step's code ran beyond its attempts (a lost lease: at least once delivery).
    duplicates: int = 0
    memo: Memo | None = None
    #: A parallel group's id: rows of one group are drawn side by side (same band).
    group: str | None = None
    child_run_id: str | None = None
    committed: bool = False
    bar: Bar | None = None


def lay_out(rows: Sequence[Row], now_ms: int, origin_ms: int | None) -> Scale:
    """Place every row's bar (and its attempts' bars) on one time axis; returns the axis."""
    spans = [Span(r.start_ms, r.end_ms) for r in rows if r.start_ms is not None]
    spans += [Span(a.start_ms, a.end_ms) for r in rows for a in r.attempts if a.start_ms is not None]
    scale = Scale.of(spans, now_ms, origin_ms=origin_ms)
    for row in rows:
        if row.start_ms is not None:
            row.bar = scale.bar(Span(row.start_ms, row.end_ms), now_ms)
        for attempt in row.attempts:
            if attempt.start_ms is not None:
                attempt.bar = scale.bar(Span(attempt.start_ms, attempt.end_ms), now_ms)
    return scale


def outcome_class(outcome: str) -> str:
    """The badge class of what an event did for a function (runtime/event_queries.py OUTCOMES)."""
    return {"started": "st-completed", "joined": "st-running", "skipped": "st-waiting"}.get(outcome, "st-other")
