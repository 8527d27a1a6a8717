"""Delivering events to the runs waiting for them: ``wait_for_event`` steps and cancellation rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from runtime import keys, store, waits
from runtime.codec import unpack
from runtime.store import RunStore, now_ms

log = structlog.get_logger("stepq.matching")

#: How far back a newly registered wait looks for events that arrived while it was being set up.
LOOK_BACK_MS = 60_000


async def record_recent(pipe: Any, name: str, event_id: str, at_ms: int) -> None:
    """Remember an event for the look-back (called in the ingest pipeline, before matching)."""
    pipe.zadd(waits.recent(name), {event_id: at_ms})
    pipe.zremrangebyscore(waits.recent(name), "-inf", at_ms - LOOK_BACK_MS)
    pipe.pexpire(waits.recent(name), LOOK_BACK_MS * 2)


async def deliver(run_store: RunStore, events: Sequence[dict[str, Any]]) -> int:
    """Resolve the waits and fire the cancellation rules these events satisfy; returns how many."""
    delivered = 0
    at = now_ms()
    found = await waits.candidates(run_store.redis, events)
    for event, records in zip(events, found, strict=True):
        for record in records:
            if waits.matches(record, event, at):
                delivered += await apply(run_store, record, event)
    return delivered


async def apply(run_store: RunStore, record: waits.WaitRecord, event: dict[str, Any]) -> int:
    """Act on one matched wait: resolve the step with the event, or cancel the run."""
    if record.kind == waits.KIND_CANCEL:
        outcome = await store.cancel(run_store, record.run_id, f"cancelled by event {event['name']!r} ({event['id']})")
        log.info("run.cancelled", run_id=record.run_id, event=event["name"], outcome=outcome.value)
        return int(outcome is store.Outcome.OK)
    outcome_text = await store.resolve(run_store, record.run_id, record.key, event, name="")
    log.debug("wait.resolved", run_id=record.run_id, key=record.key, outcome=outcome_text)
    return int(outcome_text in ("ok", "joined"))


async def look_back(run_store: RunStore, record: waits.WaitRecord, since_ms: int) -> bool:
    """Match a just-registered wait against events of its name received since ``since_ms``."""
    redis = run_store.redis
    ids = await redis.zrangebyscore(waits.recent(record.event), since_ms, "+inf")
    if not ids:
        return False
    blobs = await redis.mget([keys.event(i.decode()) for i in ids])
    at = now_ms()
    for blob in blobs:
        if blob is None:
            continue
        event = unpack(blob)
        if waits.matches(record, event, at):
            return await apply(run_store, record, event) > 0
    return False
