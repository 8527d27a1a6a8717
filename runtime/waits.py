"""Waits for events: ``step.wait_for_event`` and cancellation rules, indexed by event name.

A wait is a record in its run's shard's hash of waits on the event name (``keys.waits``, member
``<run>|<key>``) and a member of one lookup set: when its condition has the shape
``async.<path> == <value>`` (after the run's own ``event.*`` values are filled in), the equality index
``keys.wait_index(shard, name, path, value)``; otherwise the scan set ``keys.wait_scan``. An incoming
event therefore meets only its candidates, in every shard: the members of the index entries its own
values point at, and the scan set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from stepq.durations import to_timedelta
from stepq.expressions import ExpressionError, compile_expression

from . import keys
from .codec import pack, unpack
from .shards import shard_of, shards
from .wait_expressions import (
    WAIT_VARIABLES,
    equality_key,
    index_token,
    index_token_at,
    interpolate,
)

KIND_WAIT = "wait"
KIND_CANCEL = "cancel"


@dataclasses.dataclass(frozen=True, slots=True)
class WaitRecord:
    run_id: str
    key: str
    kind: str
    event: str
    expression: str | None
    expires_ms: int
    reason: str = ""

    @property
    def member(self) -> str:
        return f"{self.run_id}|{self.key}"

    def encode(self) -> bytes:
        return pack(dataclasses.asdict(self))

    @classmethod
    def decode(cls, blob: bytes) -> WaitRecord:
        return cls(**unpack(blob))


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    """What the Lua ``register_wait_from`` helper needs for one wait: its keys (for KEYS) and its
    arguments (for ARGV)."""

    field: str
    hash_key: str
    set_key: str
    member: str
    record: bytes
    #: The event name's set of indexed paths, and the path this wait is indexed by ('' for both when
    #: the wait is in the scan set).
    paths_key: str
    path: str
    #: The event name waited for (``keys.WAITED_EVENTS`` learns it before the wait is written).
    event: str = ""

    def key_names(self) -> list[str]:
        """KEYS: the name's wait hash, the lookup set, and the paths set when the wait is indexed."""
        return [self.hash_key, self.set_key, *([self.paths_key] if self.path else [])]

    def args(self) -> list[Any]:
        """ARGV: the run's field for the wait, the member, the record and the indexed path ('' if none)."""
        return [self.field, self.member, self.record, self.path]


def plan(record: WaitRecord, trigger_event: dict[str, Any]) -> tuple[WaitRecord, Registration]:
    """Fill the run's ``event.*`` values into the condition and choose the lookup set."""
    indexed = None
    if record.expression:
        record = dataclasses.replace(record, expression=interpolate(record.expression, trigger_event))
        indexed = equality_key(record.expression) if record.expression else None
    token = None
    if indexed is not None:
        path, value = indexed
        path = path.removeprefix("async.")
        token = index_token(value)
    shard = shard_of(record.run_id)
    if indexed is not None and token is not None:
        set_key, paths_key = keys.wait_index(shard, record.event, path, token), keys.wait_paths(shard, record.event)
    else:
        set_key, paths_key, path = keys.wait_scan(shard, record.event), "", ""
    return record, Registration(
        field=f"wait:{record.key}",
        hash_key=keys.waits(shard, record.event),
        set_key=set_key,
        member=record.member,
        record=record.encode(),
        paths_key=paths_key,
        path=path,
        event=record.event,
    )


async def waited_names(redis: Any, names: set[str]) -> set[str]:
    """Which of these event names some run is waiting for (or would be cancelled by).

    One command for names no wait or cancellation rule was ever registered for (``keys.WAITED_EVENTS``,
    written before any such wait exists, so it cannot miss one); the others are looked for in every
    shard."""
    ordered = sorted(names)
    if not ordered:
        return set()
    flags = await redis.smismember(keys.WAITED_EVENTS, ordered)
    return await _waited_in_shards(redis, [name for name, flag in zip(ordered, flags, strict=True) if flag])


async def _waited_in_shards(redis: Any, names: Sequence[str]) -> set[str]:
    """Which of these event names some shard holds waits on (one EXISTS per name and shard)."""
    if not names:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for key in keys.every_shard(keys.waits, name):  # one key a command: shards live apart
                pipe.exists(key)
        found = iter(await pipe.execute())
    return {name for name in names if sum(next(found) for _ in shards())}


async def learn_waited(redis: Any, names: Iterable[str]) -> None:
    """Add to ``keys.WAITED_EVENTS`` those of ``names`` that some shard holds waits on: waits written
    by older versions, before the set existed (a worker does it once, at its start)."""
    await note_waited(redis, await _waited_in_shards(redis, sorted(set(names))))


async def note_waited(redis: Any, names: Iterable[str]) -> None:
    """Record that waits on these event names may exist (``keys.WAITED_EVENTS``); called before the
    write that registers them, so that ``waited_names`` never misses a wait."""
    ordered = sorted(set(names))
    if ordered:
        await redis.sadd(keys.WAITED_EVENTS, *ordered)


def cancel_events(config: dict[str, Any]) -> list[str]:
    """The event names a function's cancellation rules listen to."""
    return sorted({str(rule["event"]) for rule in config.get("cancel") or [] if rule.get("event")})


async def candidates(redis: Any, events: Sequence[dict[str, Any]]) -> list[list[WaitRecord]]:
    """For each incoming event, the waits it may satisfy (conditions not yet evaluated), of every
    shard: four round trips at most for any number of events and shards (each a pipeline that a
    cluster client sends to every master at once), one when no wait listens to their names."""
    if not events:
        return []
    names = sorted({e["name"] for e in events})
    waited = await _shards_waited_on(redis, names)
    if not waited:
        return [[] for _ in events]
    # 1. each waited shard's scan set and indexed paths of each name
    async with redis.pipeline(transaction=False) as pipe:
        for shard in waited:
            for name in names:
                pipe.smembers(keys.wait_scan(shard, name))
                pipe.smembers(keys.wait_paths(shard, name))
        replies = iter(await pipe.execute())
    scans: dict[tuple[int, str], set[bytes]] = {}
    paths: dict[tuple[int, str], list[str]] = {}
    for shard in waited:
        for name in names:
            scans[shard, name] = next(replies)
            paths[shard, name] = sorted(p.decode() for p in next(replies))
    # 2. the equality index entries each event's own values point at
    members: dict[tuple[int, int], set[bytes]] = {}  # (shard, event index) -> wait members
    lookups: list[tuple[int, int, str]] = []
    for shard in waited:
        for i, event in enumerate(events):
            members[shard, i] = set(scans[shard, event["name"]])
            for path in paths[shard, event["name"]]:
                token = index_token_at(event, path)
                if token is not None:
                    lookups.append((shard, i, keys.wait_index(shard, event["name"], path, token)))
    if lookups:
        async with redis.pipeline(transaction=False) as pipe:
            for _, _, key in lookups:
                pipe.smembers(key)
            for (shard, i, _), found in zip(lookups, await pipe.execute(), strict=True):
                members[shard, i] |= found
    # 3. the records of those waits
    wanted = [(shard, i, sorted(found)) for (shard, i), found in members.items() if found]
    records: list[list[WaitRecord]] = [[] for _ in events]
    if wanted:
        async with redis.pipeline(transaction=False) as pipe:
            for shard, i, fields in wanted:
                pipe.hmget(keys.waits(shard, events[i]["name"]), fields)
            for (_, i, _), blobs in zip(wanted, await pipe.execute(), strict=True):
                records[i] += [WaitRecord.decode(b) for b in blobs if b is not None]
    return records


async def _shards_waited_on(redis: Any, names: Sequence[str]) -> list[int]:
    """The shards holding waits on any of these names (one round trip finds them among several)."""
    if len(shards()) == 1:
        return list(shards())
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards():
            for name in names:
                pipe.exists(keys.waits(shard, name))  # one key a command: shards live apart
        flags = iter(await pipe.execute())
    return [shard for shard in shards() if sum([next(flags) for _ in names])]


def matches(record: WaitRecord, event: dict[str, Any], now_ms: int) -> bool:
    """Whether ``event`` satisfies the wait (and the wait has not expired)."""
    if record.expires_ms and record.expires_ms < now_ms:
        return False
    if not record.expression:
        return True
    try:
        expression = compile_expression(record.expression, variables=WAIT_VARIABLES)
    except ExpressionError:
        return False  # refused at registration; a record stored by older code matches nothing
    return bool(expression.matches({"async": event, "event": {}}))


#: A cancellation rule without a timeout holds for this long (Inngest: a year).
DEFAULT_CANCEL_WINDOW_MS = 366 * 86400 * 1000


def cancel_registrations(
    run_id: str, config: dict[str, Any], trigger_event: dict[str, Any], now_ms: int
) -> list[Registration]:
    """The waits that implement a function's ``cancel`` rules for a new run."""
    out = []
    for i, rule in enumerate(config.get("cancel") or []):
        window = (
            int(to_timedelta(rule["timeout"]).total_seconds() * 1000)
            if rule.get("timeout")
            else DEFAULT_CANCEL_WINDOW_MS
        )
        record = WaitRecord(run_id, f"cancel{i}", KIND_CANCEL, rule["event"], rule.get("if"), now_ms + window)
        out.append(plan(record, trigger_event)[1])
    return out
