"""What the dashboard reads, in one place: runs, functions, events.

The pages only import from here, so that the queries they rest on (runtime/queries.py) can change
underneath without touching the pages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from redis.asyncio import Redis

from .. import keys
from ..codec import unpack
from ..queries import RunFilter, RunPage, RunView, count_runs, find_runs, get_run, search_runs
from ..registry import FunctionRecord, Registry

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
