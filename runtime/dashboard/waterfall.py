"""A run's timeline (runtime/timeline.py) as the waterfall's rows: pure, no I/O."""

from __future__ import annotations

from typing import Any

from ..timeline import Attempt, Timeline, TimelineItem
from . import views


def _attempt(attempt: Attempt) -> views.AttemptRow:
    error = views.error_text(attempt.error)
    if attempt.outcome == "duplicate":
        refused = f"ran again; its write was refused ({attempt.refusal})" if attempt.refusal else "ran again"
        error = f"{refused}{': ' + error if error else ''}"
    return views.AttemptRow(attempt.number, attempt.started_ms, attempt.ended_ms, attempt.outcome, error)


#: Timeouts this long are "none given" (an invoke's default is a year, as in Inngest).
NO_TIMEOUT_MS = 365 * 86_400_000


def _code(text: Any) -> str:
    return str(text)


def _timeout(detail: dict[str, Any]) -> str:
    timeout = detail.get("timeout_ms")
    if not isinstance(timeout, int) or timeout >= NO_TIMEOUT_MS:
        return ""
    return f", timeout {views.duration(timeout)}"


def details(item: TimelineItem, now_ms: int) -> list[str]:
    """What a row says besides its name and status, by kind."""
    d, lines = item.detail, []
    if item.kind == "sleep" and d.get("wake_at_ms") is not None:
        verb = "woke" if item.status == "completed" else "wakes"
        lines.append(f"{verb} at {views.clock(d['wake_at_ms'])} UTC ({views.ago(d['wake_at_ms'], now_ms)})")
    elif item.kind == "wait":
        condition = f" if {_code(d['if'])}" if d.get("if") else ""
        lines.append(f"waits for event {_code(d.get('event', '?'))}{condition}{_timeout(d)}")
        if d.get("matched_event_id"):
            lines.append(f"matched event {d['matched_event_id']}")
        if d.get("timed_out"):
            lines.append("timed out: no matching event")
    elif item.kind == "invoke":
        lines.append(f"invokes {d.get('function') or '?'}{_timeout(d)}")
        if d.get("timed_out"):
            lines.append("timed out")
    elif item.kind == "flow":
        if d.get("held"):
            until = f" until {views.clock(d['held_until_ms'])}" if d.get("held_until_ms") else ""
            lines.append(f"start held: {d['held']}{until}")
        if d.get("waiting_for"):
            lines.append(f"waits for: {d['waiting_for']}")
        elif d.get("waited"):
            lines.append(f"waited for: {d['waited']}")
        if d.get("held_ms"):
            lines.append(f"{views.duration(d['held_ms'])} waiting for concurrency slots in all")
    elif item.kind == "function":
        lines.append("the function's own code, outside any step")
    if item.status == "retrying" and d.get("retry_at_ms") is not None:
        lines.append(f"next attempt at {views.clock(d['retry_at_ms'])} ({views.ago(d['retry_at_ms'], now_ms)})")
    return lines


def rows(timeline: Timeline, now_ms: int) -> list[views.Row]:
    """One row per timeline item, in its order; memoized values from the run's steps."""
    memos = {step.key: step.memo for step in timeline.run.steps if step.done}
    out = []
    for item in timeline.items:
        attempts = [_attempt(a) for a in item.attempts]
        failed = [a for a in item.attempts if a.outcome == "error" and a.error]
        error = ""
        if item.status in ("failed", "retrying") and failed:
            error = views.error_text(failed[-1].error)
        elif item.detail.get("error"):
            error = views.error_text(item.detail["error"])
        memo = views.memo_view(memos[item.key]) if item.memo_present and item.key in memos else None
        child = item.detail.get("child_run_id")
        out.append(
            views.Row(
                key=item.key,
                name=item.name or item.kind,
                kind=item.kind,
                status=item.status,
                start_ms=item.start_ms,
                end_ms=item.end_ms,
                attempts=attempts,
                details=details(item, now_ms),
                error=error,
                duplicates=sum(1 for a in item.attempts if a.outcome == "duplicate"),
                memo=memo,
                group=item.group,
                child_run_id=str(child) if child else None,
                committed=item.memo_present and item.kind in ("step", "sleep", "wait", "invoke"),
            )
        )
    return out
