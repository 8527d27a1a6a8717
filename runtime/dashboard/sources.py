"""What the dashboard reads, in one place: runs, functions, events.

The pages only import from here, so that the queries they rest on (runtime/queries.py) can change
underneath without touching the pages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

from redis.asyncio import Redis

from stepq.durations import parse_duration, parse_iso

from .. import keys
from ..codec import unpack
from ..queries import RunView, get_run, list_runs
from ..registry import FunctionRecord, Registry
from ..run_status import RunStatus

__all__ = [
    "EventPage",
    "EventView",
    "FunctionSummary",
    "RunFilter",
    "RunPage",
    "RunView",
    "count_runs",
    "find_runs",
    "function_summaries",
    "get_run",
    "recent_events",
    "search_runs",
]


def _time(text: str, field: str, now_ms: int) -> int | None:
    """``15m`` (that long ago), an ISO 8601 time, or epoch milliseconds; None for empty."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        return now_ms - int(parse_duration(text, what=field).total_seconds() * 1000)
    except ValueError:
        pass
    try:
        moment = parse_iso(text)
    except ValueError:
        raise ValueError(f"{field}: {text!r} is neither a duration ago (15m, 2h, 7d) nor a time (ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a list shows."""

    function: str | None = None
    status: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    event_name: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        function: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        event: str | None = None,
    ) -> RunFilter:
        """From a form's text; ValueError naming the field that is wrong."""
        now = int(time.time() * 1000)
        status = (status or "").strip() or None
        if status is not None and status not in {s.value for s in RunStatus}:
            raise ValueError(f"status: {status!r} is not one of {', '.join(s.value for s in RunStatus)}")
        return cls(
            function=(function or "").strip() or None,
            status=status,
            since_ms=_time(since or "", "since", now),
            until_ms=_time(until or "", "until", now),
            event_name=(event or "").strip() or None,
        )

    def to_params(self) -> dict[str, str]:
        params = {
            "function": self.function or "",
            "status": self.status or "",
            "since": str(self.since_ms) if self.since_ms is not None else "",
            "until": str(self.until_ms) if self.until_ms is not None else "",
            "event": self.event_name or "",
        }
        return {k: v for k, v in params.items() if v}


@dataclasses.dataclass(slots=True)
class RunPage:
    runs: list[RunView]
    cursor: str | None


def _matches(view: RunView, flt: RunFilter) -> bool:
    if flt.since_ms is not None and view.created_ms < flt.since_ms:
        return False
    return not (flt.until_ms is not None and view.created_ms > flt.until_ms)


async def find_runs(redis: Redis, flt: RunFilter, *, limit: int = 50, cursor: str | None = None) -> RunPage:
    """Newest first; ``cursor`` continues where the last page stopped."""
    status = RunStatus(flt.status) if flt.status else None
    views = await list_runs(redis, function=flt.function, status=status, limit=limit * 4)
    views = [v for v in views if _matches(v, flt)]
    if cursor:
        views = [v for v in views if v.run_id < cursor]
    page = views[:limit]
    more = len(views) > limit
    return RunPage(page, page[-1].run_id if more and page else None)


async def search_runs(redis: Redis, text: str) -> list[RunView]:
    """The run with this id, or the runs an event with this id started."""
    text = text.strip()
    if not text:
        return []
    found = await get_run(redis, text, with_steps=False)
    return [found] if found is not None else []


async def count_runs(redis: Redis, flt: RunFilter, *, cap: int) -> tuple[int, bool]:
    page = await find_runs(redis, flt, limit=cap)
    return len(page.runs), page.cursor is not None


@dataclasses.dataclass(slots=True)
class FunctionSummary:
    record: FunctionRecord
    counts: dict[str, int]


async def function_summaries(redis: Redis) -> list[FunctionSummary]:
    return [FunctionSummary(r, {}) for r in await Registry(redis).functions()]


@dataclasses.dataclass(slots=True)
class EventView:
    event_id: str
    name: str
    received_ms: int
    data: Any
    event: dict[str, Any]
    #: Runs it started (run id -> function), and why none when it started none.
    runs: dict[str, str] = dataclasses.field(default_factory=dict)
    outcome: str | None = None


@dataclasses.dataclass(slots=True)
class EventPage:
    events: list[EventView]
    cursor: str | None


async def recent_events(
    redis: Redis, *, limit: int = 50, cursor: str | None = None, name: str | None = None
) -> EventPage:
    """The newest events first."""
    top = float(cursor) if cursor else "+inf"
    raw = await redis.zrevrangebyscore(
        keys.EVENTS, top, "-inf", start=0, num=limit * 4 if name else limit + 1, withscores=True
    )
    async with redis.pipeline(transaction=False) as pipe:
        for event_id, _ in raw:
            pipe.get(keys.event(event_id.decode()))
        blobs = await pipe.execute()
    found: list[EventView] = []
    for (event_id, score), blob in zip(raw, blobs, strict=True):
        if blob is None:
            continue
        event = unpack(blob)
        if name and event.get("name") != name:
            continue
        found.append(EventView(event_id.decode(), event.get("name", ""), int(score), event.get("data"), event))
    more = len(found) > limit
    page = found[:limit]
    return EventPage(page, str(page[-1].received_ms - 1) if more and page else None)
