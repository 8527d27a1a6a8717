"""Reading the run indexes (written by runtime/lua/run_index.lua): which index answers a filter, and
the runs it lists, newest first, from a cursor on, merged over the shards.

Every index is a zset run id -> created ms (runtime/lua/run_index.lua), so a listing is a merge of
zsets read newest first, in the order (created ms, run id) descending (all runs: the runs of each
status; a function's: its runs in each status); a cursor is the (created ms, run id) of the last run a
page looked at, and the next page starts just after it in that order. A filter is answered by its
most selective index (the one listing the fewest runs in its time range); the fields that index
does not cover are checked by membership of the other indexes (ZMSCORE), and only a function that no
registration and no run knows is checked on the runs' records.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from . import keys
from .connection import RedisClient
from .registry import Registry
from .run_filter import RunFilter
from .run_status import RunStatus
from .shards import shard_of, shards

_STATUSES = tuple(status.value for status in RunStatus)
#: A position in the newest-first order: (created ms, run id).
Position = tuple[int, str]


def encode_cursor(position: Position) -> str:
    return f"{position[0]}.{position[1]}"


def decode_cursor(cursor: str) -> Position:
    """A cursor's position. ValueError naming the cursor when it is not one this API made."""
    ms, dot, run_id = cursor.partition(".")
    # the id: a run's (a ULID), or an event's (a ULID, or a cron tick's ``cron:<slug>:<ms>``); the ms
    # in ASCII digits only: str.isdigit() also holds for digits int() refuses ('²')
    well_formed = ms.isascii() and ms.isdigit() and len(ms) <= 16 and run_id.isprintable()
    if not dot or not well_formed or not run_id or len(run_id) > 512:
        raise ValueError(f"cursor: {cursor[:80]!r} is not a cursor this API returned")
    return int(ms), run_id


#: Index keys by shard: the runs of one shard are listed in that shard's keys only.
Family = dict[int, tuple[str, ...]]


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """How a filter is answered: the index keys read newest first (``keys``: one per shard, and per
    function when a name matches several), then, for each filter field that index does not cover,
    the index keys a matching run is a member of (``checks``: one ZMSCORE per shard and key per
    chunk of runs), or the runs' records when no index names the field (``records``: a function
    that no registration and no run knows). The time range is the indexes' scores."""

    keys: tuple[str, ...]
    checks: tuple[Family, ...]
    records: bool
    #: What the index is, for people ("function+status", "all"...).
    name: str

    @property
    def covered(self) -> bool:
        """Every run the keys list in the time range matches the filter."""
        return not self.checks and not self.records


async def function_slugs(redis: RedisClient, function: str) -> list[str]:
    """The functions ``function`` names (a slug, or an id without its app's prefix): the registered
    ones, else the text itself if some run has it as its slug (a function no longer registered keeps
    its runs); [] when neither (its filter is then checked on the records)."""
    flt = RunFilter(function=function)
    found = [r.slug for r in await Registry(redis).functions() if flt.matches_function(r.slug, r.app_id)]
    if found:
        return found
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards():  # one EXISTS per shard: one command may not touch keys of two slots
            pipe.exists(*_function_keys(shard, function))
        exists = await pipe.execute()
    return [function] if any(exists) else []


def _function_keys(shard: int, slug: str) -> tuple[str, ...]:
    """A function's runs in a shard: its runs in each status."""
    return tuple(keys.runs_by_function_status(shard, slug, status) for status in _STATUSES)


def _window(flt: RunFilter) -> tuple[str, str]:
    """The score range of the filter's time range, for ZCOUNT: created in [since, until)."""
    low = str(flt.since_ms) if flt.since_ms is not None else "-inf"
    high = f"({flt.until_ms}" if flt.until_ms is not None else "+inf"
    return low, high


async def plan(redis: RedisClient, flt: RunFilter) -> Plan:
    """The most selective index for ``flt``: a function's runs in a status, a function's, a status's,
    an event name's, or all runs; when the event name competes with another, the one listing fewer
    runs in the time range (one ZCOUNT per key, one round trip). The other fields are checked by
    membership of the other indexes."""
    slugs = await function_slugs(redis, flt.function) if flt.function else []
    status = flt.status.value if flt.status else None
    families: dict[str, Family] = {}  # what each field (or pair) can be read or checked by
    if slugs and status:
        families["function+status"] = {
            s: tuple(keys.runs_by_function_status(s, slug, status) for slug in slugs) for s in shards()
        }
    elif slugs:
        families["function"] = {s: tuple(k for slug in slugs for k in _function_keys(s, slug)) for s in shards()}
    elif status:
        families["status"] = {s: (keys.runs_by_status(s, status),) for s in shards()}
    if flt.event_name is not None:
        families["event"] = {s: (keys.runs_by_event(s, flt.event_name),) for s in shards()}
    records = bool(flt.function) and not slugs
    if not families:
        every = tuple(keys.runs_by_status(s, status) for s in shards() for status in _STATUSES)
        return Plan(every, (), records, "all")
    names = list(families)
    chosen = names[0]
    if len(names) > 1:
        low, high = _window(flt)
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                for family_keys in families[name].values():
                    for key in family_keys:
                        pipe.zcount(key, low, high)
            counts = iter(await pipe.execute())
        sizes = {name: sum(int(next(counts)) for ks in families[name].values() for _ in ks) for name in names}
        chosen = min(names, key=sizes.__getitem__)
    primary = tuple(key for family_keys in families[chosen].values() for key in family_keys)
    checks = tuple(families[name] for name in names if name != chosen)
    return Plan(primary, checks, records, chosen)


async def count_in(redis: RedisClient, index: Plan, flt: RunFilter) -> int:
    """How many runs the index lists in the filter's time range (exact when it covers the filter)."""
    low, high = _window(flt)
    async with redis.pipeline(transaction=False) as pipe:
        for key in index.keys:
            pipe.zcount(key, low, high)
        return sum(int(n) for n in await pipe.execute())


class _Stream:
    """One index key read newest first, by rank, within the filter's time range, after a position."""

    def __init__(self, key: str, flt: RunFilter, after: Position | None) -> None:
        self.key = key
        self.since_ms = flt.since_ms
        self.until_ms = flt.until_ms
        self.after = after
        self.rank = 0
        self.buffer: collections.deque[Position] = collections.deque()
        self.exhausted = False

    def take(self, raw: list[tuple[bytes, float]], asked: int) -> None:
        """Keep the entries of a read (``asked`` entries from ``self.rank``) that come after the
        position and within the range."""
        self.rank += len(raw)
        if len(raw) < asked:
            self.exhausted = True
        for member, score in raw:
            entry = (int(score), member.decode())
            if self.since_ms is not None and entry[0] < self.since_ms:
                self.exhausted = True
                break
            # entries newer than the position: ties of its ms read before it, runs created since a
            # previous read shifted the ranks, or past ``until`` (a cursor used with another range)
            if (self.after is not None and entry >= self.after) or (
                self.until_ms is not None and entry[0] >= self.until_ms
            ):
                continue
            self.buffer.append(entry)


class Merged:
    """Several index keys read as one listing, newest first (a k-way merge of their reads)."""

    def __init__(
        self, redis: RedisClient, index_keys: Sequence[str], flt: RunFilter, after: Position | None, chunk: int
    ) -> None:
        self.redis = redis
        self.flt = flt
        self.chunk = chunk
        self.streams = [_Stream(key, flt, after) for key in index_keys]
        self._started = False

    async def _start(self) -> None:
        """Each stream's first rank: just after the position (the cursor's run, when this key holds
        it, else the first entry older than its ms), or the first entry before ``until``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                if stream.after is not None:
                    pipe.zrevrank(stream.key, stream.after[1])
                    pipe.zscore(stream.key, stream.after[1])
                    pipe.zcount(stream.key, f"({stream.after[0]}", "+inf")
                elif self.flt.until_ms is not None:
                    pipe.zcount(stream.key, self.flt.until_ms, "+inf")
            replies = iter(await pipe.execute())
        for stream in self.streams:
            if stream.after is not None:
                rank, score, newer = next(replies), next(replies), next(replies)
                held = rank is not None and score is not None and int(score) == stream.after[0]
                stream.rank = int(rank) + 1 if held else int(newer)
            elif self.flt.until_ms is not None:
                stream.rank = int(next(replies))
        self._started = True

    async def _refill(self) -> None:
        wanted = [s for s in self.streams if not s.buffer and not s.exhausted]
        if not wanted:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in wanted:
                pipe.zrevrange(stream.key, stream.rank, stream.rank + self.chunk - 1, withscores=True)
            replies = await pipe.execute()
        for stream, raw in zip(wanted, replies, strict=True):
            stream.take(raw, self.chunk)

    async def take(self, n: int) -> list[Position]:
        """The next ``n`` runs (fewer at the end), newest first."""
        if not self._started:
            await self._start()
        out: list[Position] = []
        while len(out) < n:
            # a read may keep nothing (ties of the cursor's millisecond): read on until every stream
            # that is not exhausted shows an entry
            while any(not s.buffer and not s.exhausted for s in self.streams):
                await self._refill()
            if not any(s.buffer for s in self.streams):
                break  # every stream exhausted
            # entries at or above the highest last-buffered entry of the streams not exhausted are
            # final: whatever those streams hold unread is older
            floor = max((s.buffer[-1] for s in self.streams if not s.exhausted), default=None)
            ready = [(e, i) for i, s in enumerate(self.streams) for e in s.buffer if floor is None or e >= floor]
            ready.sort(reverse=True)
            taken = ready[: n - len(out)]
            for _, i in taken:
                self.streams[i].buffer.popleft()  # each stream's taken entries are its newest
            out += [e for e, _ in taken]
            for stream in self.streams:  # later reads skip what the merge returned already
                stream.after = out[-1]
        return out


async def members(redis: RedisClient, index: Plan, positions: list[Position]) -> list[Position]:
    """The positions whose runs are members of every family in ``index.checks`` (of some key of it,
    in the run's shard): one ZMSCORE per key and shard, in one round trip."""
    if not index.checks or not positions:
        return positions
    by_shard: dict[int, list[str]] = {}
    for _, run_id in positions:
        by_shard.setdefault(shard_of(run_id), []).append(run_id)
    asked: list[tuple[int, int]] = []  # (family number, shard) per command
    async with redis.pipeline(transaction=False) as pipe:
        for number, family in enumerate(index.checks):
            for shard, run_ids in by_shard.items():
                for key in family.get(shard, ()):
                    pipe.zmscore(key, run_ids)
                    asked.append((number, shard))
        replies = await pipe.execute()
    found: dict[tuple[int, str], bool] = {}
    for (number, shard), scores in zip(asked, replies, strict=True):
        for run_id, score in zip(by_shard[shard], scores, strict=True):
            if score is not None:
                found[number, run_id] = True
    families = range(len(index.checks))
    return [p for p in positions if all(found.get((number, p[1])) for number in families)]
