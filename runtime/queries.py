"""Read-only views of runs, for the CLI and the HTTP API."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import keys, run_index
from .codec import unpack
from .connection import RedisClient
from .event_queries import event_run_ids
from .gather import gathered
from .registry import Registry
from .run_filter import RunFilter as RunFilter  # re-exported: the queries take it
from .run_index import Position, decode_cursor, encode_cursor
from .run_status import RunStatus
from .run_view import RunView as RunView  # re-exported: the reads return it
from .run_view import StepView as StepView
from .shards import shard_of


def _int(raw: bytes | None) -> int | None:
    return int(raw) if raw is not None else None


def _run_view(run_id: str, raw: dict[bytes, bytes]) -> RunView:
    def text(field: str) -> str:
        value = raw.get(field.encode())
        return value.decode() if value is not None else ""

    return RunView(
        run_id=run_id,
        function=text("fn"),
        app_id=text("app"),
        status=text("status"),
        created_ms=_int(raw.get(b"created")) or 0,
        started_ms=_int(raw.get(b"started")),
        ended_ms=_int(raw.get(b"ended")),
        wake_at_ms=None,
        output=unpack(raw[b"output"]) if b"output" in raw else None,
        error=unpack(raw[b"error"]) if b"error" in raw else None,
        event_ids=[e for e in text("event_ids").split(",") if e],
        function_retries=_int(raw.get(b"fn_retries")) or 0,
        function_error=text("fn_error") or None,
        reason=text("reason") or None,
        held=text("held") or None,
        held_until_ms=_int(raw.get(b"held_until")),
        waiting_for=text("slot_wait") or None,
        waited=text("waited") or None,
        held_ms=_int(raw.get(b"held_ms")) or 0,
        event_name=text("ev") or None,
        replay_of=text("replay_of") or None,
        forked_from=text("forked_from") or None,
        from_step=text("from_step") or None,
        replays=[r for r in text("replays").split(",") if r],
        **_gather_view(raw),
    )


def _gather_view(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A debounced or batched run's ``waiting`` and ``gathered`` (none for other runs)."""
    found = gathered(raw)
    if found is None:
        return {}
    waits = raw.get(b"status") == RunStatus.QUEUED.value.encode() and b"started" not in raw
    return {"waiting": found.waiting(int(time.time() * 1000)) if waits else None, "gathered": found.to_dict()}


async def get_run(redis: RedisClient, run_id: str, *, with_steps: bool = True) -> RunView | None:
    """One run with its steps in completion order (then pending ones), or None if unknown or expired."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.run(run_id))
        pipe.lrange(keys.stack(run_id), 0, -1)
        pipe.hgetall(keys.steps(run_id))
        pipe.hgetall(keys.memo(run_id))
        raw, stack, meta, memo = await pipe.execute()
    if not raw:
        return None
    view = _run_view(run_id, raw)
    if b"timer" in raw:  # sleeping: its wake-up time is the timer's score
        score = await redis.zscore(keys.timers(shard_of(run_id)), raw[b"timer"])
        view.wake_at_ms = int(score) if score is not None else None
    if not with_steps:
        return view
    record = await Registry(redis).get(view.function)
    if record is not None and isinstance(record.config.get("retries"), int):
        view.retries = record.config["retries"]
    fields = {k.decode(): v.decode() for k, v in meta.items()}
    if b"sleep_key" in raw:  # a sleeping run keeps its sleep's name in its record
        fields[f"{raw[b'sleep_key'].decode()}:name"] = raw.get(b"sleep_name", b"").decode()
    order = [k.decode() for k in stack]
    pending = sorted({f.split(":", 1)[0] for f in fields} - set(order))  # reported, not yet resolved
    for key in order + pending:
        view.steps.append(
            StepView(
                key=key,
                name=fields.get(f"{key}:name", key),
                attempts=int(fields.get(f"{key}:attempts", "1" if key in order else "0")),
                executions=int(fields.get(f"{key}:execs", "0")),
                duration_ms=int(fields[f"{key}:ms"]) if f"{key}:ms" in fields else None,
                finished_ms=int(fields[f"{key}:at"]) if f"{key}:at" in fields else None,
                error=fields.get(f"{key}:error"),
                memo=unpack(memo[key.encode()]) if key.encode() in memo else None,
                done=key in order,
            )
        )
    return view


# -- filtered lists, counts and search (the dashboard's and the bulk actions' read model) -------------


@dataclasses.dataclass(slots=True)
class RunPage:
    """One page of runs, newest first."""

    runs: list[RunView]
    #: Opaque: pass it back to ``find_runs`` for the next (older) page; None on the last page.
    cursor: str | None
    #: The page stopped at the scan bound before it was full: more runs may match further on
    #: (``cursor`` goes on from where the scan stopped).
    truncated: bool = False


#: Index entries one page looks at, at most: a filter its index does not cover (an event name and a
#: function, say) may match few of them; the page then returns what it found (``truncated``).
PAGE_SCAN_MAX = 2000
#: Index entries ``run_ids`` and ``count_runs`` look at, at most, for a filter its index does not cover.
BULK_SCAN_MAX = 200_000
_LIGHT_FIELDS = ("fn", "app", "status", "created", "ev")


async def _matching(
    redis: RedisClient, flt: RunFilter, index: run_index.Plan, positions: list[Position]
) -> list[Position]:
    """The positions whose runs match ``flt``: all of them when the index covers it; else those in
    the other indexes the filter needs (``run_index.members``), and, when a field has no index,
    whose records match (a few fields of each, read in one round trip)."""
    positions = await run_index.members(redis, index, positions)
    if not index.records or not positions:
        return positions
    async with redis.pipeline(transaction=False) as pipe:
        for _, run_id in positions:
            pipe.hmget(keys.run(run_id), list(_LIGHT_FIELDS))
        replies = await pipe.execute()
    found = []
    for position, values in zip(positions, replies, strict=True):
        if values[0] is None:
            continue  # expired: its index entries go at the shard's next run end
        raw = {name.encode(): value for name, value in zip(_LIGHT_FIELDS, values, strict=True) if value is not None}
        if flt.matches(_run_view(position[1], raw)):
            found.append(position)
    return found


async def _views(redis: RedisClient, run_ids: list[str]) -> list[RunView]:
    """The runs' views without their steps, in the order given (runs gone meanwhile left out)."""
    async with redis.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hgetall(keys.run(run_id))
        records = await pipe.execute()
    return [_run_view(run_id, raw) for run_id, raw in zip(run_ids, records, strict=True) if raw]


async def find_runs(redis: RedisClient, flt: RunFilter, *, limit: int = 50, cursor: str | None = None) -> RunPage:
    """A page of the runs matching ``flt``, newest first (by creation); ``cursor`` (from the previous
    page) continues with older ones. Reads the filter's most selective index (runtime/run_index.py)
    and looks at ``limit + PAGE_SCAN_MAX`` of its entries at most. ValueError for a malformed cursor
    or a limit below 1."""
    if limit < 1:
        raise ValueError(f"limit: must be at least 1, got {limit}")
    after = decode_cursor(cursor) if cursor else None
    index = await run_index.plan(redis, flt)
    chunk = limit + 1 if index.covered else max(500, 4 * limit)
    merged = run_index.Merged(redis, index.keys, flt, after, chunk)
    matches: list[Position] = []
    examined = 0
    last: Position | None = None
    exhausted = False
    bound = limit + PAGE_SCAN_MAX
    while len(matches) <= limit and examined < bound:
        batch = await merged.take(min(chunk, bound - examined))
        if not batch:
            exhausted = True
            break
        examined += len(batch)
        last = batch[-1]
        matches += await _matching(redis, flt, index, batch)
    page = matches[:limit]
    views = await _views(redis, [run_id for _, run_id in page])  # a run expired meanwhile is left out
    if len(matches) > limit:
        return RunPage(views, encode_cursor(page[-1]))
    if exhausted or last is None:
        return RunPage(views, None)
    return RunPage(views, encode_cursor(last), truncated=True)


async def _matching_ids(redis: RedisClient, flt: RunFilter, cap: int) -> tuple[list[str], bool]:
    """Up to ``cap`` ids of matching runs, newest first, and whether the scan stopped at its bound."""
    index = await run_index.plan(redis, flt)
    merged = run_index.Merged(redis, index.keys, flt, None, 1000)
    found: list[str] = []
    examined = 0
    while len(found) < cap:
        if examined >= BULK_SCAN_MAX:
            return found, True
        batch = await merged.take(1000)
        if not batch:
            break
        examined += len(batch)
        found += [run_id for _, run_id in await _matching(redis, flt, index, batch)]
    return found[:cap], False


async def run_ids(redis: RedisClient, flt: RunFilter, *, cap: int) -> list[str]:
    """The ids of the runs matching ``flt``, newest first, at most ``cap`` of them (bulk actions; a
    run whose record expired a moment ago may be among them: an action finds it missing). A filter
    its index does not cover looks at ``BULK_SCAN_MAX`` index entries at most."""
    return (await _matching_ids(redis, flt, cap))[0]


async def count_runs(redis: RedisClient, flt: RunFilter, *, cap: int) -> tuple[int, bool]:
    """How many runs match ``flt``, counting up to ``cap``: (count, whether the count reached the cap,
    or the scan its bound: more may match). A filter one index covers is counted by the index."""
    index = await run_index.plan(redis, flt)
    if index.covered:
        n = await run_index.count_in(redis, index, flt)
        return min(n, cap), n >= cap
    found, bounded = await _matching_ids(redis, flt, cap)
    return len(found), bounded or len(found) >= cap


async def search_runs(redis: RedisClient, text: str) -> list[RunView]:
    """The run whose id is ``text``, or the runs the event with id ``text`` started (newest first);
    [] when neither is known."""
    text = text.strip()
    if not text or len(text) > 200:
        return []
    view = await get_run(redis, text, with_steps=False)
    if view is not None:
        return [view]
    ids = await event_run_ids(redis, text)
    views = await _views(redis, ids)
    return sorted(views, key=lambda v: (v.created_ms, v.run_id), reverse=True)


async def list_runs(
    redis: RedisClient, *, function: str | None = None, status: RunStatus | None = None, limit: int = 20
) -> list[RunView]:
    """The newest runs first, active and finished, optionally filtered by function and status."""
    return (await find_runs(redis, RunFilter(function=function, status=status), limit=limit)).runs
