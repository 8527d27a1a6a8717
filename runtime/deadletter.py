"""Dead letters: queue entries no worker can run, moved aside so that they cannot stop a worker.

A queue member that is not UTF-8, a score that is not a finite number, a job whose arq keys hold the
wrong type, or a queue key that is not a sorted set would crash a worker at every poll (and again
after every restart). Workers move such an entry out of the queue, and record it in the shard's
dead letters (``keys.dead_letters``: a list, newest first, at most ``MAX_DEAD_LETTERS`` records) in
the same Lua call; ``stepq dead-letters`` lists them. A queue key of the wrong type is renamed aside
(``keys.dead_queue``, in its slot) with its content intact, and the worker serves from a fresh queue.
The timer reconciler sets malformed members of a shard's timers aside the same way.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from typing import Any

from . import keys
from .connection import RedisClient
from .scripts import Scripts
from .store import now_ms

#: How many dead letters are kept (the oldest are dropped beyond).
MAX_DEAD_LETTERS = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry moved aside: a queue member, or a whole queue key (``member`` None)."""

    queue: str
    reason: str
    at_ms: int
    #: The member's exact bytes (None when the whole queue key was moved).
    member: bytes | None = None
    #: The member's score as Redis printed it (``-inf``, ``1712...``).
    score: str | None = None
    #: Where a queue key of the wrong type was renamed to, and what type it held.
    moved_to: str | None = None
    key_type: str | None = None

    @property
    def member_text(self) -> str | None:
        """The member for people: UTF-8 where it is, ``\\xNN`` escapes where it is not."""
        return None if self.member is None else self.member.decode("utf-8", "backslashreplace")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the member as text (escaped) and as base64 (exact)."""
        return {
            "queue": self.queue,
            "member": self.member_text,
            "member_b64": None if self.member is None else base64.b64encode(self.member).decode(),
            "score": self.score,
            "reason": self.reason,
            "at": dt.datetime.fromtimestamp(self.at_ms / 1000, dt.UTC).isoformat(timespec="milliseconds"),
            "at_ms": self.at_ms,
            "moved_to": self.moved_to,
            "type": self.key_type,
        }

    @classmethod
    def from_record(cls, raw: bytes) -> DeadLetter:
        """A stored record; one that is not ours reads as a dead letter saying so (never raises)."""
        try:
            record = json.loads(raw)
            member = record.get("member_b64")
            return cls(
                queue=str(record["queue"]),
                reason=str(record["reason"]),
                at_ms=int(record["at_ms"]),
                member=None if member is None else base64.b64decode(member),
                score=None if record.get("score") is None else str(record["score"]),
                moved_to=record.get("moved_to"),
                key_type=record.get("type"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(queue="?", reason=f"unreadable dead-letter record: {raw[:200]!r}", at_ms=0)


async def move_member(scripts: Scripts, shard: int, queue: str, member: bytes, reason: str) -> DeadLetter | None:
    """Move ``member`` out of ``queue`` (a zset of ``shard``) into the shard's dead letters; None if it
    had left the queue already."""
    record = {"queue": queue, "member_b64": base64.b64encode(member).decode(), "reason": reason, "at_ms": now_ms()}
    stored = await scripts.call(
        "dead_letter",
        [queue, keys.dead_letters(shard), keys.lock_in(shard, member)],
        ["member", json.dumps(record), MAX_DEAD_LETTERS, member, record["at_ms"]],
    )
    return None if stored is None else DeadLetter.from_record(stored)


async def move_queue(scripts: Scripts, shard: int, queue_id: str, reason: str) -> DeadLetter | None:
    """Rename ``shard``'s part of queue ``queue_id`` aside if it holds something other than a sorted
    set; None if it is sound."""
    at, queue = now_ms(), keys.queue(shard, queue_id)
    aside = keys.dead_queue(shard, queue_id, at)
    record = {"queue": queue, "reason": reason, "at_ms": at, "moved_to": aside}
    stored = await scripts.call(
        "dead_letter", [queue, keys.dead_letters(shard), aside], ["queue", json.dumps(record), MAX_DEAD_LETTERS]
    )
    return None if stored is None else DeadLetter.from_record(stored)


async def list_dead_letters(redis: RedisClient, limit: int = 100) -> list[DeadLetter]:
    """The newest ``limit`` dead letters of every shard, newest first."""
    found: list[DeadLetter] = []
    for key in keys.every_shard(keys.dead_letters):
        raw: list[bytes] = await redis.lrange(key, 0, max(limit, 1) - 1)  # type: ignore[misc]
        found += [DeadLetter.from_record(item) for item in raw]
    return sorted(found, key=lambda letter: letter.at_ms, reverse=True)[: max(limit, 1)]
