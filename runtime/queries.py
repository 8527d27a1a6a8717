"""Read-only views of runs, for the CLI and the HTTP API."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from redis.asyncio import Redis

from . import keys
from .codec import unpack
from .gather import gathered
from .registry import Registry
from .run_filter import RunFilter as RunFilter  # re-exported: the queries take it
from .run_status import RunStatus
from .shards import shard_of, shards


@dataclasses.dataclass(slots=True)
class StepView:
    key: str
    name: str
    #: Retry attempts: 1 for a step that succeeded at once, n after n - 1 failures.
    attempts: int
    #: Times the step's code ran, committed or not: more than ``attempts`` means duplicate
    #: executions (a worker lost its lease and another ran the step again; at least once delivery).
    executions: int
    duration_ms: int | None
    finished_ms: int | None
    error: str | None
    memo: Any
    done: bool


@dataclasses.dataclass(slots=True)
class RunView:
    run_id: str
    function: str
    app_id: str
    status: str
    created_ms: int
    started_ms: int | None
    ended_ms: int | None
    wake_at_ms: int | None
    output: Any = None
    error: Any = None
    event_ids: list[str] = dataclasses.field(default_factory=list)
    steps: list[StepView] = dataclasses.field(default_factory=list)
    #: The function's ``retries`` as registered now (each step's, and the function body's own),
    #: or None when the function is no longer registered.
    retries: int | None = None
    #: Retries after the function's own code failed outside any step, over the whole run, and the last error.
    function_retries: int = 0
    function_error: str | None = None
    #: Why flow control skipped the run (status ``skipped``: "rate limited: ...", "idempotent
    #: duplicate of run X", "singleton: run X is active") or cancelled it ("singleton: replaced by
    #: <run>"); None otherwise.
    reason: str | None = None
    #: Why its start waited, and until when: "throttled (key ...)"; None when it did not.
    held: str | None = None
    held_until_ms: int | None = None
    #: The concurrency limit the run waits for now ("concurrency limit 2 reached for key \"acme\""),
    #: None when it does not; ``waited``: the last one it waited for, kept after it went on;
    #: ``held_ms``: how long it waited for concurrency slots in all.
    waiting_for: str | None = None
    waited: str | None = None
    held_ms: int = 0
    #: Why the run has not started yet, for people ("debounced until ...", "batching 3/10 until ..."),
    #: or None.
    waiting: str | None = None
    #: The events a debounced or batched run gathers (runtime/gather.py), or None.
    gathered: dict[str, Any] | None = None
    #: The name of the event that started the run (its first, for a batch), or None (older runs).
    event_name: str | None = None

    @property
    def duplicate_executions(self) -> int:
        """Executions beyond each step's attempts, over the whole run."""
        return sum(max(0, step.executions - step.attempts) for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "duplicate_executions": self.duplicate_executions}


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
        **_gather_view(raw),
    )


def _gather_view(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A debounced or batched run's ``waiting`` and ``gathered`` (none for other runs)."""
    found = gathered(raw)
    if found is None:
        return {}
    waits = raw.get(b"status") == RunStatus.QUEUED.value.encode() and b"started" not in raw
    return {"waiting": found.waiting(int(time.time() * 1000)) if waits else None, "gathered": found.to_dict()}


async def get_run(redis: Redis, run_id: str, *, with_steps: bool = True) -> RunView | None:
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


def _indexes(shard: int) -> tuple[tuple[str, bool], ...]:
    """A shard's run indexes, each with whether it holds ended runs."""
    return (keys.runs_active(shard), False), (keys.runs_done(shard), True)


async def list_runs(
    redis: Redis, *, function: str | None = None, status: RunStatus | None = None, limit: int = 20
) -> list[RunView]:
    """The newest runs first, active and finished, optionally filtered by function and status."""
    found: list[RunView] = []
    indexes = [(index, terminal) for shard in shards() for index, terminal in _indexes(shard)]
    for index, terminal in indexes:
        if status is not None and status.terminal != terminal:
            continue  # ended runs are indexed as done, the others as active
        offset, page = 0, max(50, limit)
        while True:
            ids = await redis.zrevrange(index, offset, offset + page - 1)
            if not ids:
                break
            async with redis.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.hgetall(keys.run(run_id.decode()))
                records = await pipe.execute()
            for run_id, raw in zip(ids, records, strict=True):
                if not raw:
                    continue
                view = _run_view(run_id.decode(), raw)
                if function and function not in (view.function, view.function.removeprefix(view.app_id + "-")):
                    continue
                if status and view.status != status:
                    continue
                found.append(view)
            if len(found) >= limit * 2 or len(ids) < page:
                break
            offset += page
    # A run that ended while we read both indexes appears in each: keep its newest view.
    unique = {view.run_id: view for view in found}
    return sorted(unique.values(), key=lambda v: v.created_ms, reverse=True)[:limit]


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


def _encode_cursor(created_ms: int, run_id: str) -> str:
    return f"{created_ms}.{run_id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """A cursor's (created ms, run id): where the previous page stopped. ValueError when malformed."""
    ms, dot, run_id = cursor.partition(".")
    if not dot or not ms.isdigit() or not run_id or not run_id.isalnum():
        raise ValueError(f"cursor: {cursor!r} is not a cursor this API returned")
    return int(ms), run_id


async def _scan_all(redis: Redis, flt: RunFilter) -> list[RunView]:
    """Every run matching ``flt``, newest first (created ms, then run id), by reading every record."""
    found: dict[str, RunView] = {}
    for shard in shards():
        for index, _ in _indexes(shard):
            ids = [i.decode() for i in await redis.zrange(index, 0, -1)]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                async with redis.pipeline(transaction=False) as pipe:
                    for run_id in chunk:
                        pipe.hgetall(keys.run(run_id))
                    records = await pipe.execute()
                for run_id, raw in zip(chunk, records, strict=True):
                    if raw:
                        view = _run_view(run_id, raw)
                        if flt.matches(view):
                            found[run_id] = view
    return sorted(found.values(), key=lambda v: (v.created_ms, v.run_id), reverse=True)


async def find_runs(redis: Redis, flt: RunFilter, *, limit: int = 50, cursor: str | None = None) -> RunPage:
    """A page of the runs matching ``flt``, newest first (by creation); ``cursor`` (from the previous
    page) continues with older ones. ValueError for a malformed cursor or a limit below 1."""
    if limit < 1:
        raise ValueError(f"limit: must be at least 1, got {limit}")
    after = decode_cursor(cursor) if cursor else None
    views = await _scan_all(redis, flt)
    if after is not None:
        views = [v for v in views if (v.created_ms, v.run_id) < after]
    page = views[:limit]
    more = len(views) > limit
    return RunPage(page, _encode_cursor(page[-1].created_ms, page[-1].run_id) if more and page else None)


async def run_ids(redis: Redis, flt: RunFilter, *, cap: int) -> list[str]:
    """The ids of every run matching ``flt``, newest first, at most ``cap`` of them (bulk actions)."""
    return [view.run_id for view in (await _scan_all(redis, flt))[:cap]]


async def count_runs(redis: Redis, flt: RunFilter, *, cap: int) -> tuple[int, bool]:
    """How many runs match ``flt``, counting up to ``cap``: (count, whether it reached the cap)."""
    found = len(await _scan_all(redis, flt))
    return min(found, cap), found >= cap


async def search_runs(redis: Redis, text: str) -> list[RunView]:
    """The run whose id is ``text``, or the runs the event with id ``text`` started (newest first);
    [] when neither is known."""
    text = text.strip()
    if not text or not text.replace("-", "").replace("_", "").isalnum():
        return []
    view = await get_run(redis, text, with_steps=False)
    if view is not None:
        return [view]
    return [v for v in await _scan_all(redis, RunFilter()) if text in v.event_ids]
