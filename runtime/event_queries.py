"""Read-only views of stored events and of what each did: the runs it started, or, per function it
reached, why none (recorded by runtime/lua/ingest_events.lua in the write that stored the event, and
for runs created in other shards by the acknowledgement of their outbox messages).

Events are stored in shards (an event's id names its shard): listings merge every shard's index."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import keys
from .codec import unpack
from .connection import RedisClient
from .run_filter import RunFilter
from .run_index import Merged, decode_cursor, encode_cursor
from .shards import event_shard, shards

#: What an event did for one function: ``started`` a run; ``joined`` the open debounce or batch run
#: of its key; was ``deduplicated`` (the run named already had its id); was ``skipped`` by flow
#: control (the reason says which limit; the skipped run's record keeps it); or ``no match`` (no
#: function is triggered by its name, or the function's trigger expression did not hold).
OUTCOMES = ("started", "joined", "deduplicated", "skipped", "no match")
#: The outcomes whose run the event belongs to (search by event id lists them).
_ITS_RUNS = ("started", "joined", "skipped")


@dataclasses.dataclass(frozen=True, slots=True)
class EventOutcome:
    #: The function's slug; None for "no function is triggered by this name".
    function: str | None
    run_id: str | None
    outcome: str
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class EventView:
    """A stored event (``id``: the id stepq gave it; ``sent_id``: the sender's idempotency key, if
    any) and its outcomes, one per function it reached (none recorded for events stored before
    outcomes were)."""

    id: str
    name: str
    data: Any
    ts: int
    received_ms: int
    outcomes: list[EventOutcome]
    sent_id: str | None = None
    user: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "outcomes": [o.to_dict() for o in self.outcomes]}


@dataclasses.dataclass(slots=True)
class EventPage:
    """Events newest first; ``cursor`` (opaque) gets the next (older) page, None on the last."""

    events: list[EventView]
    cursor: str | None


def _outcomes(blob: bytes | None) -> list[EventOutcome]:
    if blob is None:
        return []
    out = []
    for entry in unpack(blob):
        slug, outcome, run_id, reason = (e.decode() if isinstance(e, bytes) else str(e) for e in entry)
        out.append(EventOutcome(slug or None, run_id or None, outcome, reason or None))
    return out


def _view(event_id: str, blob: bytes, received: float | None, outcomes: bytes | None) -> EventView:
    raw = unpack(blob)
    if not isinstance(raw, dict):
        raw = {}
    sent_id = raw.get("id")
    return EventView(
        id=event_id,
        name=str(raw.get("name", "")),
        data=raw.get("data"),
        ts=int(raw.get("ts") or 0),
        received_ms=int(received) if received is not None else int(raw.get("ts") or 0),
        outcomes=_outcomes(outcomes),
        sent_id=str(sent_id) if sent_id and sent_id != event_id else None,
        user=raw.get("user") or None,
    )


async def _read(redis: RedisClient, event_ids: list[str]) -> list[EventView]:
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.get(keys.event(event_id))
            pipe.zscore(keys.events_index(event_shard(event_id)), event_id)
            pipe.get(keys.event_outcomes(event_id))
        replies = await pipe.execute()
    views = []
    for i, event_id in enumerate(event_ids):
        blob, received, outcomes = replies[3 * i : 3 * i + 3]
        if blob is not None:
            views.append(_view(event_id, blob, received, outcomes))
    return views


async def get_event(redis: RedisClient, event_id: str) -> EventView | None:
    """One stored event with its outcomes, or None (unknown, or past the retention)."""
    found = await _read(redis, [event_id])
    return found[0] if found else None


async def recent_events(
    redis: RedisClient, *, limit: int = 50, cursor: str | None = None, name: str | None = None
) -> EventPage:
    """Stored events newest first (of one name, when given), ``limit`` per page; ValueError for a
    malformed cursor or a limit below 1."""
    if limit < 1:
        raise ValueError(f"limit: must be at least 1, got {limit}")
    after = decode_cursor(cursor) if cursor else None
    indexes = [keys.events_named(shard, name) if name else keys.events_index(shard) for shard in shards()]
    positions = await Merged(redis, indexes, RunFilter(), after, limit + 1).take(limit + 1)
    page = positions[:limit]
    views = await _read(redis, [event_id for _, event_id in page])
    return EventPage(views, encode_cursor(page[-1]) if len(positions) > limit else None)


async def event_run_ids(redis: RedisClient, event_id: str) -> list[str]:
    """The runs an event started, joined or had skipped ([] for an unknown event)."""
    blob = await redis.get(keys.event_outcomes(event_id))
    return [o.run_id for o in _outcomes(blob) if o.run_id and o.outcome in _ITS_RUNS]
