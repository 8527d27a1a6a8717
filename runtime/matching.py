"""Delivering events to the runs waiting for them: ``wait_for_event`` steps and cancellation rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from . import history, keys, lifecycle, routine_log, store, tracing, waits
from .bounded import gather_bounded
from .codec import unpack
from .lifecycle import Ingest
from .shards import shards
from .store import now_ms

log = structlog.get_logger("stepq.matching")

#: How far back a newly registered wait looks for events that arrived while it was being set up.
LOOK_BACK_MS = 10_000
#: The look-back keeps at most this many recent events per name (a list, cheaper than a zset).
RECENT_MAX = 1000
#: How many runs one delivery resolves waits of (or cancels) at once: a few round trips each.
APPLY_CONCURRENCY = 16


async def deliver(ingest: Ingest, events: Sequence[dict[str, Any]]) -> int:
    """Resolve the waits and fire the cancellation rules these events satisfy; returns how many."""
    at = now_ms()
    matched: dict[str, list[tuple[waits.WaitRecord, dict[str, Any]]]] = {}  # run id -> its waits met
    for event, records in zip(events, await waits.candidates(ingest.redis, events), strict=True):
        for record in records:
            if waits.matches(record, event, at):
                matched.setdefault(record.run_id, []).append((record, event))

    async def for_run(met: list[tuple[waits.WaitRecord, dict[str, Any]]]) -> int:
        # one run's waits in the events' order (a cancellation then a resolve of the same run meet
        # the run as they did on one shard); runs are independent of each other
        return sum([await apply(ingest, record, event) for record, event in met])

    return sum(await gather_bounded(APPLY_CONCURRENCY, (for_run(met) for met in matched.values())))


async def apply(ingest: Ingest, record: waits.WaitRecord, event: dict[str, Any]) -> int:
    """Act on one matched wait: resolve the step with the event, or cancel the run."""
    if record.kind == waits.KIND_CANCEL:
        reason = f"cancelled by event {event['name']!r} ({event['id']})"
        outcome = await lifecycle.cancel(ingest, record.run_id, reason)
        if routine_log.on():
            log.info("run.cancelled", run_id=record.run_id, event_name=event["name"], outcome=outcome.value)
        return int(outcome is store.Outcome.OK)
    fields = history.entry(history.K_EVENT, key=record.key, event_id=event.get("id"), event=event.get("name"))
    written = await ingest.store.resolve(record.run_id, record.key, event, name="", history=fields)
    if routine_log.on():
        log.debug("wait.resolved", run_id=record.run_id, key=record.key, outcome=written.outcome.value)
    await lifecycle.runs_failed(ingest, written.ended)
    resolved = written.outcome in (store.Outcome.OK, store.Outcome.JOINED)
    if resolved:
        await tracing.wait_matched(ingest.redis, record.run_id, record.key, event, written.outcome.value)
    return int(resolved)


async def look_back(ingest: Ingest, record: waits.WaitRecord, since_ms: int) -> bool:
    """Match a just-registered wait against events of its name received since ``since_ms``."""
    redis = ingest.redis
    found: list[tuple[int, str]] = []
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards():  # events of a name are stored in every shard: look in each
            pipe.lrange(keys.recent_events(shard, record.event), 0, -1)
        lists: list[list[bytes]] = await pipe.execute()
    for recent in lists:
        for entry in recent:
            at_ms, _, event_id = entry.decode().partition(":")
            if int(at_ms) < since_ms:
                break  # newest first
            found.append((int(at_ms), event_id))
    if not found:
        return False
    found.sort(reverse=True)  # newest first, as one shard's list is, whichever shard holds them
    at = now_ms()
    async with redis.pipeline(transaction=False) as pipe:
        for _, event_id in found:
            pipe.get(keys.event(event_id))  # one key a command: events live in their shards
        blobs = await pipe.execute()
    for blob in blobs:
        if blob is None:
            continue
        event = unpack(blob)
        if waits.matches(record, event, at):
            return await apply(ingest, record, event) > 0
    return False
