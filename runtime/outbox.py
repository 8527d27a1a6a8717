"""The outbox: how a script makes another shard act without touching its keys.

On a Redis Cluster every Lua script touches one slot (one shard, runtime/shards.py). A script that
must make another shard act (create a run there, resolve an invoking parent's step, match events
against the waits there) writes a *message* into its own shard's outbox, in the same script, so
the message exists exactly when the script's own writes do: ``stepq:{<tag>}:outbox`` (zset message
id -> when the sweeper may deliver it) and ``stepq:{<tag>}:outbox:body`` (hash id -> msgpack).

The process that ran the script delivers its messages at once (``deliver``: a script or a few reads
on the target shard) and acknowledges each (removes it from the outbox). If that process dies in
between, a sweeper that every worker runs (``Sweeper``: per shard, under a short lock) delivers the
messages whose time came (``REDELIVER_AFTER_MS`` after they were written). Every delivery is
idempotent, so a message delivered twice (its sender and the sweeper raced, or the ack was lost)
does nothing twice:

- ``run``: create a run in the target shard. The delivery script remembers its reply under the
  message's id in the target shard (``keys.outbox_received``, for the dedupe window, a day by
  default) and a redelivery gets that reply back without writing: no second run, no event joining
  a debounce twice, no flow-control limit charged twice. (Past that window create_run itself still
  refuses a second run of the same id.) The ack adds the event's outcome for that function.
- ``resolve``: an invoked child ended; memoize its result in the parent's step. Resolving a step
  already resolved is a duplicate (a no-op); a parent whose step timed out meanwhile ignores it.
- ``match``: match stored events (by id, in the source shard's event log) against the waits and
  cancellation rules of every shard. A wait already resolved is a duplicate; an ended run's
  cancellation is a no-op.

Message ids name both shards: ``<source:02d><target:02d>:<unique>``. A message that cannot be read
(not msgpack, an unknown kind, a field of the wrong type) is moved to the shard's dead letters
(``keys.outbox_dead``, a bounded list) and logged; it never stops a worker.

Scripts return the ids of the messages they wrote after the runs they ended (``ends`` in
runtime/lua/prelude.lua), marked with ``MARK``: ``lifecycle.runs_failed``, which every caller
already hands those runs to, delivers them (``split`` tells them apart).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import structlog

from . import keys, routine_log
from .bounded import gather_bounded
from .codec import pack, unpack
from .shards import SHARD_LIMIT, shards

log = structlog.get_logger("stepq.outbox")

#: Marks a message id among the runs a script ended (``ends`` in the prelude).
MARK = ">"
#: How long a message waits for its sender's delivery before the sweeper delivers it; also in
#: runtime/lua/prelude.lua (OUTBOX_REDELIVER_MS).
REDELIVER_AFTER_MS = 5000
#: The longest a sweep of one shard may hold its lock.
SWEEP_LOCK_MS = 30_000
#: How many messages one sweep of a shard delivers at most (the next sweep takes the rest).
SWEEP_BATCH = 200
#: How many unreadable messages a shard's dead letters keep.
DEAD_MAX = 1000

KIND_RUN = "run"
KIND_RESOLVE = "resolve"
KIND_MATCH = "match"


class BadMessage(ValueError):
    """An outbox message that cannot be read; the message says what was wrong."""


def message_id(source: int, target: int, unique: str) -> str:
    """The id of a message from shard ``source`` to shard ``target`` (as the prelude's outbox_put)."""
    return f"{source:02d}{target:02d}:{unique}"


def split(ended: Iterable[str]) -> tuple[list[str], list[str]]:
    """A script's ends (``ends`` in the prelude): (the runs it ended, its outbox messages' ids)."""
    runs, messages = [], []
    for item in ended:
        if item.startswith(MARK):
            messages.append(item[len(MARK) :])
        else:
            runs.append(item)
    return runs, messages


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A message read from an outbox (``decode``)."""

    id: str
    source: int
    target: int
    kind: str
    body: dict[str, Any]


def _shards_of(message_id_: str) -> tuple[int, int]:
    head, sep, unique = message_id_.partition(":")
    if not sep or len(head) != 4 or not head.isdigit() or not unique:
        raise BadMessage(f"message id {message_id_!r}: expected '<source:02d><target:02d>:<unique>'")
    source, target = int(head[:2]), int(head[2:])
    if source >= SHARD_LIMIT or target >= SHARD_LIMIT:
        raise BadMessage(f"message id {message_id_!r}: shard out of range (0..{SHARD_LIMIT - 1})")
    return source, target


def source_of(message_id_: str) -> int:
    """The shard whose outbox holds the message; BadMessage for an id no outbox writes."""
    return _shards_of(message_id_)[0]


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError as exc:
            raise BadMessage(f"field {name!r}: not UTF-8") from exc
    raise BadMessage(f"field {name!r}: expected a string, got {type(value).__name__}")


def _blob(body: dict[str, Any], name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, bytes):
        raise BadMessage(f"field {name!r}: expected bytes, got {type(value).__name__}")
    return value


def _items(body: dict[str, Any], name: str, types: tuple[type, ...]) -> list[Any]:
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(v, types) and not isinstance(v, bool) for v in value):
        raise BadMessage(f"field {name!r}: expected a list of {'/'.join(t.__name__ for t in types)}")
    return value


def decode(message_id_: str, blob: bytes) -> Message:
    """Read and check a message; BadMessage says what is wrong with it.

    Bodies are read with every string as bytes: scripts (Lua's cmsgpack) write binary values as
    msgpack strings, Python writes them as bin; both come back as bytes here."""
    source, target = _shards_of(message_id_)
    try:
        raw = msgpack.unpackb(blob, raw=True, strict_map_key=False)
    except Exception as exc:
        raise BadMessage(f"not msgpack: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(k, bytes) for k in raw):
        raise BadMessage(f"expected a map with string keys, got {type(raw).__name__}")
    body = {k.decode(errors="replace"): v for k, v in raw.items()}
    kind = _text(body, "k")
    if kind == KIND_RUN:
        checked = {
            "keys": _items(body, "keys", (bytes,)),
            "args": _items(body, "args", (bytes, int, float)),
            "event": _text(body, "event"),
            "fn": _text(body, "fn"),
            "gathers": bool(body.get("gathers")),
        }
    elif kind == KIND_RESOLVE:
        checked = {
            "run": _text(body, "run"),
            "key": _text(body, "key"),
            "value": _blob(body, "value"),
            "fields": _blob(body, "fields"),
        }
    elif kind == KIND_MATCH:
        checked = {"ids": [v.decode(errors="replace") for v in _items(body, "ids", (bytes,))]}
    else:
        raise BadMessage(f"unknown kind {kind!r}")
    return Message(message_id_, source, target, kind, checked)


def run_body(keys_: Sequence[Any], args: Sequence[Any], *, event_id: str, fn: str, gathers: bool) -> bytes:
    """The body of a ``run`` message: create_run's KEYS and ARGV (as ``RunStore.create_run`` made
    them), and what the ack needs to record the event's outcome."""
    body = {"k": KIND_RUN, "keys": list(keys_), "args": list(args), "event": event_id, "fn": fn, "gathers": gathers}
    return pack(body)


def match_body(event_ids: Sequence[str]) -> bytes:
    """The body of a ``match`` message: the stored events (in the source shard) to match."""
    return pack({"k": KIND_MATCH, "ids": list(event_ids)})


def _outcome(reply: list[Any], fn: str, gathers: bool) -> list[str]:
    """The event's outcome for a run created by a ``run`` message (as ingest_events.lua records it)."""
    code, run_id = int(reply[0]), _str(reply[1])
    if code == 1:
        return [fn, "started", run_id, ""]
    if code == 2:
        return [fn, "skipped", run_id, _str(reply[2])]
    return [fn, "joined" if gathers else "deduplicated", run_id, ""]


def _str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


#: How many messages one ``deliver`` call delivers at once (each is a few round trips).
DELIVER_CONCURRENCY = 16


async def deliver(ingest: Any, message_ids: Sequence[str], known: dict[str, bytes] | None = None) -> int:
    """Deliver these messages (each read from its source shard's outbox, unless ``known`` holds its
    body: the sender's own) and acknowledge them; returns how many were delivered now (one
    acknowledged already is skipped). ``ingest``: a ``runtime.ingest.Ingest`` (its store, its Redis,
    and its sends for the events of runs' ends). Deliveries are independent: they go at once.

    Never raises for a message: a delivery that fails (Redis went away) is logged and left in the
    outbox for the sweeper."""
    if not message_ids:
        return 0

    async def one(message_id_: str) -> int:
        try:
            return await _deliver_one(ingest, message_id_, (known or {}).get(message_id_))
        except Exception:
            log.exception("outbox.delivery_failed", message_id=message_id_)
            return 0

    return sum(await gather_bounded(DELIVER_CONCURRENCY, (one(m) for m in message_ids)))


async def _deliver_one(ingest: Any, message_id_: str, blob: bytes | None) -> int:
    store = ingest.store
    try:
        source = source_of(message_id_)
    except BadMessage as exc:
        log.error("outbox.bad_id", message_id=message_id_, error=str(exc))
        return 0
    if blob is None:
        blob = await ingest.redis.hget(keys.outbox_body(source), message_id_)
        if blob is None:
            return 0  # acknowledged already (by the sender, or by another sweeper)
    try:
        message = decode(message_id_, blob)
    except BadMessage as exc:
        await _dead(ingest, source, message_id_, blob, str(exc))
        return 0
    outcome: bytes = b""
    outcome_key = ""
    if message.kind == KIND_RUN:
        outcome_key, outcome = await _create_run(ingest, message)
    elif message.kind == KIND_RESOLVE:
        written = await store.resolve_packed(
            message.body["run"], message.body["key"], message.body["value"], history=message.body["fields"]
        )
        from . import lifecycle  # lifecycle delivers outbox messages: imported at use, no cycle

        await lifecycle.runs_failed(ingest, written.ended)
    else:
        await _match(ingest, message)
    acked = await store.scripts.call(
        "outbox_ack",
        [keys.outbox(source), keys.outbox_body(source), outcome_key or keys.outbox(source)],
        [message_id_, "outcome" if outcome else "", outcome],
    )
    if routine_log.on():
        log.debug("outbox.delivered", message_id=message_id_, kind=message.kind, acked=acked == 1)
    return int(acked == 1)


async def _create_run(ingest: Any, message: Message) -> tuple[str, bytes]:
    """Deliver a ``run`` message; returns the event's outcomes key and the outcome to add there."""
    from . import flow_starts, lifecycle

    body = message.body
    store = ingest.store
    reply = await store.scripts.call(
        "outbox_receive_run",
        [keys.outbox_received(message.target, message.id), *body["keys"]],
        [store.limits.dedupe_s, *body["args"]],
    )
    created = unpack(reply[1]) if isinstance(reply[1], bytes) else reply[1]
    outcomes = flow_starts.StartOutcomes.of_create_run(created)
    if outcomes:
        event: dict[str, Any] = {}
        if outcomes.skipped:
            raw = await ingest.redis.get(keys.event(body["event"]))
            event = unpack(raw) if raw else {}
        run_id = _str(created[1])
        await lifecycle.announce_starts(ingest, outcomes, {run_id: (body["fn"], event)})
    if not body["event"]:
        return "", b""
    return keys.event_outcomes(body["event"]), pack(_outcome(created, body["fn"], body["gathers"]))


async def _match(ingest: Any, message: Message) -> None:
    """Deliver a ``match`` message: the events against the waits of every shard."""
    from . import matching

    ids = message.body["ids"]
    blobs = await ingest.redis.mget([keys.event(i) for i in ids]) if ids else []
    events = [unpack(b) for b in blobs if b is not None]
    if events:
        await matching.deliver(ingest, events)


async def _dead(ingest: Any, shard: int, message_id_: str, blob: bytes, error: str) -> None:
    log.error("outbox.bad_message", message_id=message_id_, error=error)
    record = pack({"id": message_id_, "error": error, "body": blob})
    await ingest.store.scripts.call(
        "outbox_ack",
        [keys.outbox(shard), keys.outbox_body(shard), keys.outbox_dead(shard)],
        [message_id_, "dead", record, DEAD_MAX],
    )


async def sweep(ingest: Any, shard: int, now_ms: int) -> int:
    """Deliver the messages of ``shard``'s outbox whose time came (their senders died, or lost Redis,
    before delivering them), under the shard's sweep lock; returns how many were delivered."""
    redis = ingest.redis
    token = secrets.token_hex(8)
    if not await redis.set(keys.outbox_lock(shard), token, nx=True, px=SWEEP_LOCK_MS):
        return 0  # another process sweeps this shard now
    try:
        due = await redis.zrangebyscore(keys.outbox(shard), "-inf", now_ms, start=0, num=SWEEP_BATCH)
        ids = [d.decode(errors="replace") if isinstance(d, bytes) else str(d) for d in due]
        if ids:
            log.info("outbox.redelivering", shard=shard, count=len(ids))
        return await deliver(ingest, ids)
    finally:
        if await redis.get(keys.outbox_lock(shard)) == token.encode():
            await redis.delete(keys.outbox_lock(shard))


#: With several shards, a worker looks at one shard's outbox this often at most (the ``outbox``
#: chore, workers/shard_chores.py; on one Redis it looks every ``STEPQ_OUTBOX_SWEEP``, 10 s): what an
#: idle worker pays for the sweeper on a Redis Cluster (0.2 command/s); it reaches each of 32 shards
#: every 160 s.
SWEEP_MIN_GAP_S = 5.0


class Sweeper:
    """Delivers the messages whose senders died. A worker visits one shard at a time (``visit``, a
    ``ShardChore``: one command when nothing is due); ``sweep_all`` looks at every shard at once."""

    def __init__(self, ingest: Any) -> None:
        self.ingest = ingest
        self._failing = False  # an outage is logged once, at its start

    def _failed(self, exc: BaseException, **fields: Any) -> None:
        if not self._failing:
            log.warning("outbox.sweep_failed", error=f"{type(exc).__name__}: {exc}", **fields)
        self._failing = True

    async def visit(self, shard: int) -> int:
        """Sweep ``shard`` if a message is due there (one ZRANGEBYSCORE when none is); returns how many
        messages were delivered. Redis errors propagate (the chore logs them once)."""
        from .store import now_ms

        now = now_ms()
        if not await self.ingest.redis.zrangebyscore(keys.outbox(shard), "-inf", now, start=0, num=1):
            return 0
        return await sweep(self.ingest, shard, now)

    async def sweep_all(self, now_ms: int) -> int:
        """Sweep the shards that have a message due (one round trip finds them); returns how many
        messages were delivered."""
        try:
            async with self.ingest.redis.pipeline(transaction=False) as pipe:
                for shard in shards():  # one key a command: shards live apart
                    pipe.zrangebyscore(keys.outbox(shard), "-inf", now_ms, start=0, num=1)
                due = await pipe.execute()
        except Exception as exc:  # Redis away: the next round tries again
            self._failed(exc)
            return 0
        if self._failing:
            log.info("outbox.sweep_recovered")
            self._failing = False
        delivered = 0
        for shard in [s for s, found in zip(shards(), due, strict=True) if found]:
            try:
                delivered += await sweep(self.ingest, shard, now_ms)
            except Exception as exc:  # Redis away: the next round tries again
                self._failed(exc, shard=shard)
        return delivered
