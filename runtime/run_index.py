"""Reading the run indexes (written by runtime/lua/run_index.lua): which index answers a filter, and
the runs it lists, newest first, from a cursor on, merged over the shards.

Every index is a zset run id -> created ms, so a listing is a merge of zsets read newest first, in
the order (created ms, run id) descending; a cursor is the (created ms, run id) of the last run a
page looked at, and the next page starts just after it in that order. A filter is answered by its
most selective index (the one listing the fewest runs in its time range); the fields that index
does not cover are checked on the runs' records.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from redis.asyncio import Redis

from . import keys
from .registry import Registry
from .run_filter import RunFilter
from .shards import shards

#: A position in the newest-first order: (created ms, run id).
Position = tuple[int, str]


def encode_cursor(position: Position) -> str:
    return f"{position[0]}.{position[1]}"


def decode_cursor(cursor: str) -> Position:
    """A cursor's position. ValueError naming the cursor when it is not one this API made."""
    ms, dot, run_id = cursor.partition(".")
    if not dot or not ms.isdigit() or len(ms) > 16 or not run_id or not run_id.isalnum() or len(run_id) > 64:
        raise ValueError(f"cursor: {cursor[:80]!r} is not a cursor this API returned")
    return int(ms), run_id


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """The index keys (one per shard, and per function when a name matches several) that together
    list every run the filter may match, and whether they match nothing else (``covered``: no field
    left to check on the records, the time range being their scores)."""

    keys: tuple[str, ...]
    covered: bool
    #: What the index is, for people ("function+status", "all"...).
    name: str


async def function_slugs(redis: Redis, function: str) -> list[str]:
    """The functions ``function`` names (a slug, or an id without its app's prefix): the registered
    ones, else the text itself if some run has it as its slug (a function no longer registered keeps
    its runs); [] when neither (its filter is then checked on the records)."""
    flt = RunFilter(function=function)
    found = [r.slug for r in await Registry(redis).functions() if flt.matches_function(r.slug, r.app_id)]
    if found:
        return found
    exists = await redis.exists(*(keys.runs_by_function(s, function) for s in shards()))
    return [function] if exists else []


def _window(flt: RunFilter) -> tuple[str, str]:
    """The score range of the filter's time range, for ZCOUNT: created in [since, until)."""
    low = str(flt.since_ms) if flt.since_ms is not None else "-inf"
    high = f"({flt.until_ms}" if flt.until_ms is not None else "+inf"
    return low, high


async def plan(redis: Redis, flt: RunFilter) -> Plan:
    """The most selective index for ``flt``: a function's runs in a status, a function's, a status's,
    an event name's, or all runs; when the event name competes with another, the one listing fewer
    runs in the time range (one ZCOUNT per key, one round trip)."""
    slugs = await function_slugs(redis, flt.function) if flt.function else []
    status = flt.status.value if flt.status else None
    wanted = {f for f, v in (("function", flt.function), ("status", status), ("event", flt.event_name)) if v}

    def option(index_keys: tuple[str, ...], *fields: str) -> Plan:
        return Plan(index_keys, wanted <= set(fields), "+".join(fields) or "all")

    options: list[Plan] = []
    if slugs and status:
        fs = tuple(keys.runs_by_function_status(s, slug, status) for s in shards() for slug in slugs)
        options.append(option(fs, "function", "status"))
    elif slugs:
        options.append(option(tuple(keys.runs_by_function(s, slug) for s in shards() for slug in slugs), "function"))
    elif status:
        options.append(option(tuple(keys.runs_by_status(s, status) for s in shards()), "status"))
    if flt.event_name is not None:
        options.append(option(tuple(keys.runs_by_event(s, flt.event_name) for s in shards()), "event"))
    if not options:
        return option(tuple(keys.runs_all(s) for s in shards()))
    if len(options) == 1:
        return options[0]
    low, high = _window(flt)
    async with redis.pipeline(transaction=False) as pipe:
        for candidate in options:
            for key in candidate.keys:
                pipe.zcount(key, low, high)
        counts = iter(await pipe.execute())
    sizes = [sum(int(next(counts)) for _ in candidate.keys) for candidate in options]
    return options[min(range(len(options)), key=sizes.__getitem__)]


async def count_in(redis: Redis, index: Plan, flt: RunFilter) -> int:
    """How many runs the index lists in the filter's time range (exact when it covers the filter)."""
    low, high = _window(flt)
    async with redis.pipeline(transaction=False) as pipe:
        for key in index.keys:
            pipe.zcount(key, low, high)
        return sum(int(n) for n in await pipe.execute())


class _Stream:
    """One index key read newest first, by rank, within the filter's time range, after a position."""

    def __init__(self, key: str, since_ms: int | None, after: Position | None) -> None:
        self.key = key
        self.since_ms = since_ms
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
            # entries newer than the position: ties of its ms read before it, or runs created since
            # a previous read shifted the ranks
            if self.after is not None and entry >= self.after:
                continue
            self.buffer.append(entry)


class Merged:
    """Several index keys read as one listing, newest first (a k-way merge of their reads)."""

    def __init__(
        self, redis: Redis, index_keys: Sequence[str], flt: RunFilter, after: Position | None, chunk: int
    ) -> None:
        self.redis = redis
        self.flt = flt
        self.chunk = chunk
        self.streams = [_Stream(key, flt.since_ms, after) for key in index_keys]
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
            await self._refill()
            if not any(s.buffer for s in self.streams):
                break  # every stream exhausted
            # an entry is next only while every stream that may hold a newer one shows its head
            while len(out) < n and all(s.buffer or s.exhausted for s in self.streams):
                live = [s for s in self.streams if s.buffer]
                if not live:
                    break
                entry = max(live, key=lambda s: s.buffer[0]).buffer.popleft()
                out.append(entry)
                for stream in self.streams:  # later reads skip what the merge returned already
                    stream.after = entry
        return out
