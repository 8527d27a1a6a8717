"""Event ingestion: store each event, start one run per function it triggers.

One round trip per send on one Redis, however many events and functions, once the sender knows the
routes of its event names (cached under the registry's version, see ``Registry.cached_route``): one
script that stores the events and creates the runs (each with its own dedupe), unless a
registration changed the routes meanwhile. One script, not a pipeline: a batch is stored whole or
not at all, even when Redis runs out of memory halfway (see runtime/lua/ingest_events.lua).

A batch is stored in one shard (``batch_shard``; its events' ids name it). With several shards (a
Redis Cluster), what the batch makes other shards do goes through that shard's outbox
(runtime/outbox.py), written by the same script: each run placed in another shard is one message,
and the matching of the events against the waits and cancellation rules of every shard is one more.
The sender delivers them at once; if it dies first, a worker's sweeper does. On one shard the runs
are created by the script itself and no message is written unless a run waits for one of the names.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from collections.abc import Sequence
from typing import Any

import structlog

from stepq.errors import InvalidEventError, StepqError
from stepq.event import Event
from stepq.expressions import Bindings, ExpressionError, compile_expression
from stepq.runtime.shards import new_run_id, shard_of, shards
from stepq.triggers import TRIGGER_VARIABLES

from . import flow_starts, keys, lifecycle, matching, outbox, placement, waits
from .codec import pack
from .connection import RedisClient
from .gather import gathering
from .registry import FunctionRecord, Registry, Route
from .scripts import body, libraries, prelude, register, script_text, source
from .store import RunStore, now_ms

log = structlog.get_logger("stepq.ingest")

#: How often a send routes again when registrations keep changing the routes under it.
ROUTE_ATTEMPTS = 5
#: An event's outcome for a function it did not start (runtime/event_queries.py).
NO_MATCH = "no match"
#: Names that only stepq itself may send.
RESERVED_PREFIXES = ("inngest/", "stepq/")


def triggered(fn: FunctionRecord, name: str, bindings: Bindings) -> bool:
    """Whether an event named ``name`` starts ``fn``: one of its triggers for that name has no
    expression, or an expression that holds for the event (``bindings`` holds ``event``).

    An expression that does not compile (registered by an app that skipped the SDK's checks)
    matches nothing and is logged.
    """
    expressions = [t.get("expression") for t in fn.config.get("triggers", []) if t.get("event") == name]
    if not expressions:
        return True  # routed here by name alone
    for text in expressions:
        if not text or not str(text).strip():
            return True
        try:
            expression = compile_expression(text, variables=TRIGGER_VARIABLES)
        except ExpressionError as exc:
            log.warning("trigger.invalid_expression", function=fn.slug, event_name=name, error=str(exc))
            continue
        if expression.matches(bindings):
            return True
    return False


@functools.cache
def batch_script() -> str:
    """The ingest script: the shared prelude, create_run.lua as a local function of its own KEYS and
    ARGV (so a run is created by the very code ``RunStore.create_run`` calls), then the batch loop."""
    return (
        prelude()
        + libraries("create_run")
        + "\nlocal function create_run(KEYS, ARGV)\n"
        + body("create_run")
        + "\nend\n"
        + script_text("ingest_events")
    )


class _CreateRunCalls:
    """Stands in for a Redis client so that ``RunStore.create_run`` hands over its script's KEYS and
    ARGV instead of sending them: the batch script then runs create_run's code with exactly those,
    and the argument contract stays in one place (runtime/store.py)."""

    _SHA = hashlib.sha1(source("create_run").encode()).hexdigest()

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.args: list[Any] = []
        self.count = 0
        #: The next call's event (its number, from 1) and whether its run gathers events: the batch
        #: script records what create_run did for that event (its outcomes).
        self.event_no = 0
        self.gathers = False

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        if sha != self._SHA:  # anything else would be run below as if it were create_run
            raise RuntimeError("RunStore.create_run sent a script other than runtime/lua/create_run.lua")
        self.keys.extend(keys_and_args[:numkeys])
        self.args += [numkeys, len(keys_and_args) - numkeys, self.event_no, int(self.gathers)]
        self.args += keys_and_args[numkeys:]
        self.count += 1


class _OneCall:
    """Stands in for a Redis client so that ``RunStore.create_run`` hands over one call's KEYS and ARGV
    (a run placed in another shard: they travel in an outbox message, runtime/outbox.py)."""

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.args: list[Any] = []

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        if sha != _CreateRunCalls._SHA:
            raise RuntimeError("RunStore.create_run sent a script other than runtime/lua/create_run.lua")
        self.keys, self.args = list(keys_and_args[:numkeys]), list(keys_and_args[numkeys:])


class Ingest:
    def __init__(self, redis: RedisClient, store: RunStore, registry: Registry) -> None:
        self.redis = redis
        self.store = store
        self.registry = registry
        self._batch = register(redis, batch_script())

    async def send(
        self, events: Sequence[Event], *, internal: bool = False, only_if_wanted: bool = False, traceparent: str = ""
    ) -> list[str]:
        """Store validated events and start the runs they trigger; return the stored events' ids.

        Each event gets a fresh id (a ULID); its own ``id``, when set, is the idempotency key: a
        function starts at most once per key within the dedupe window. When unset, ``event.id``
        becomes the stored id. ``internal`` allows reserved names; ``only_if_wanted`` drops events
        that no function and no wait listens to (runs' lifecycle events, sent on every run's end).
        ``traceparent``: the sender's span (W3C, checked by the caller), continued by the runs started.
        """
        if not internal:
            for i, event in enumerate(events):
                if event.name.startswith(RESERVED_PREFIXES):
                    where = f"events[{i}]" if len(events) > 1 else "event"
                    raise InvalidEventError(f"{where}.name: names starting with 'inngest/' or 'stepq/' are reserved")
        at = now_ms()
        shard = batch_shard()
        ids = [new_run_id(at, shard) for _ in events]  # an event's id names its shard, as a run's does
        stored = [
            Event(e.name, e.data, e.id or event_id, e.ts or at, e.v, e.user)
            for e, event_id in zip(events, ids, strict=True)
        ]
        for _ in range(ROUTE_ATTEMPTS):
            route = await self.registry.cached_route(e.name for e in stored)
            keep: Sequence[int] = range(len(stored))
            if only_if_wanted:
                wanted = await waits.waited_names(self.redis, {e.name for e in stored})
                keep = [i for i, e in enumerate(stored) if route.functions.get(e.name) or e.name in wanted]
                if not keep:
                    return []
            kept = ([events[i] for i in keep], [ids[i] for i in keep], [stored[i] for i in keep])
            sent = await self._store(shard, *kept, route, at, traceparent)
            if sent is not None:
                break
            self.registry.forget()  # a registration changed the routes meanwhile: route again
        else:
            raise StepqError(f"the function registry kept changing while {len(events)} event(s) were sent; retry")
        ended, bodies = sent
        # the batch's messages, as the script wrote them: its runs in other shards first, then the
        # matching of its events (which then meets the cancellation rules of those runs, as on one shard)
        match = [m for m in bodies if m.partition(":")[2].startswith("match:")]
        await outbox.deliver(self, [m for m in bodies if m not in match], bodies)
        await outbox.deliver(self, match, bodies)
        await lifecycle.runs_failed(self, ended)
        return kept[1]

    async def _store(
        self,
        shard: int,
        events: Sequence[Event],
        ids: list[str],
        stored: list[Event],
        route: Route,
        at: int,
        traceparent: str = "",
    ) -> tuple[list[str], dict[str, bytes]] | None:
        """Store the events in ``shard`` and create their runs, as routed; returns the script's ends
        (the runs its flow control ended, then any outbox message its create_runs wrote:
        ``lifecycle.runs_failed`` takes them) and the outbox messages the batch wrote (id -> body),
        for the sender to deliver. None when the routes are stale (nothing was stored)."""
        routes = route.functions
        retention = self.store.limits.retention_s
        several = len(shards()) > 1
        batch_keys: list[Any] = [keys.events_index(shard), keys.outbox(shard), keys.outbox_body(shard)]
        batch_args: list[Any] = [
            at,
            retention,
            matching.RECENT_MAX,
            matching.LOOK_BACK_MS,
            # several shards: the registry lives in another slot (checked apart, see _check_version)
            "-" if several else (route.version or b""),
            len(stored),
            len(shards()),
            outbox.message_id(shard, shard, f"match:{ids[0]}"),
            outbox.match_body(ids),
        ]
        messages: list[Any] = []  # id, body of each run placed in another shard
        event_args: list[Any] = []
        runs = _CreateRunCalls()
        described: dict[str, tuple[str, dict[str, Any]]] = {}  # runs with start limits: (function, event)
        for event_no, (event_id, original, event) in enumerate(zip(ids, events, stored, strict=True), start=1):
            event_dict = event.to_dict()
            bindings = Bindings(event=event_dict)  # converted once, on the first filter
            # what the event did, per function: the batch script adds what create_run did
            known: list[list[str]] = []
            if not routes.get(event.name):
                known.append(["", NO_MATCH, "", f"no function is triggered by {event.name!r}"])
            for fn in routes.get(event.name, []):
                if not triggered(fn, event.name, bindings):
                    known.append([fn.slug, NO_MATCH, "", "its trigger's expression did not hold for the event"])
                    continue
                limits = self.store.function_limits(fn.config)
                # debounce and batching gather events into one run, and ignore event-id dedupe
                gather = gathering(fn.flow, fn.slug, event_dict, bindings, limits)
                dedupe_key = (original.id or None) if gather is None else None
                run_id = (
                    placement.new_run_id(fn.slug, fn.flow, bindings, dedupe_key, at)
                    if gather is None
                    else gather.run_id(at)
                )
                checks = flow_starts.start_checks(fn.flow, fn.slug, run_id, bindings, self.store.limits)
                if checks.count:
                    described[run_id] = (fn.slug, event_dict)
                here = shard_of(run_id) == shard
                call: _CreateRunCalls | _OneCall = runs if here else _OneCall()
                runs.event_no, runs.gathers = event_no, gather is not None
                await self.store.create_run(
                    run_id=run_id,
                    fn_slug=fn.slug,
                    app_id=fn.app_id,
                    queue_id=fn.config.get("queue") or fn.app_id,
                    events=[event],
                    event_ids=[event_id],
                    dedupe_key=dedupe_key,
                    rules=waits.cancel_registrations(run_id, fn.config, event_dict, at),
                    limits=limits,
                    flow=fn.flow,
                    checks=checks,
                    pipe=call,
                    gather=gather,
                    trace=traceparent,
                )
                if isinstance(call, _OneCall):
                    messages.append(outbox.message_id(shard, shard_of(run_id), f"{event_id}:{run_id}"))
                    messages.append(
                        outbox.run_body(call.keys, call.args, event_id=event_id, fn=fn.slug, gathers=gather is not None)
                    )
            batch_keys += [
                keys.event(event_id),
                keys.recent_events(shard, event.name),
                keys.events_named(shard, event.name),
                keys.event_outcomes(event_id),
                keys.waits(shard, event.name),
            ]
            event_args += [event_id, pack(event_dict), pack(known)]
        batch_args += [len(messages) // 2, *messages, *event_args]
        reply = await self._batch(keys=batch_keys + runs.keys, args=[*batch_args, runs.count, *runs.args])
        if reply[0] == b"stale":
            return None
        if several:
            await self._check_version(route)
        outcomes = flow_starts.StartOutcomes.of(reply[2:])
        await lifecycle.announce_starts(self, dataclasses.replace(outcomes, ended=()), described)
        ended, written = outbox.split(outcomes.ended)
        bodies = dict(zip(messages[::2], messages[1::2], strict=True))
        match_id = batch_args[7]
        for message_id in written:
            if message_id == match_id:
                bodies[match_id] = batch_args[8]  # written when some run may wait (see the script)
            elif message_id not in bodies:
                ended.append(outbox.MARK + message_id)  # a create_run's own (a parent resumed): read back
        return ended, bodies

    async def _check_version(self, route: Route) -> None:
        """With several shards the batch script cannot read the registry (another slot): a send racing
        a registration is routed by either version, and the next send routes afresh."""
        if await self.redis.get(keys.FUNCTIONS_VERSION) != (route.version or None):
            self.registry.forget()


def batch_shard() -> int:
    """The shard a batch of events is stored in: any of those served (the batch's runs go where
    their placement puts them, ``placement.new_run_id``)."""
    count = len(shards())
    return random.randrange(count) if count > 1 else 0
