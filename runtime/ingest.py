"""Event ingestion: store each event, start one run per function it triggers.

Two round trips per send, however many events and functions: one to route the names, one pipeline
that stores the events and creates the runs (each creation an atomic script with its own dedupe).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from redis.asyncio import Redis

from runtime import keys, matching, waits
from runtime.codec import pack
from runtime.registry import FunctionRecord, Registry
from runtime.store import RunStore, now_ms
from sdk.event import Event
from sdk.expressions import Bindings, ExpressionError, compile_expression
from sdk.ids import new_ulid
from sdk.triggers import TRIGGER_VARIABLES

log = structlog.get_logger("stepq.ingest")

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


class Ingest:
    def __init__(self, redis: Redis, store: RunStore, registry: Registry) -> None:
        self.redis = redis
        self.store = store
        self.registry = registry

    async def send(self, events: Sequence[Event], *, internal: bool = False, only_if_wanted: bool = False) -> list[str]:
        """Store validated events and start the runs they trigger; return the stored events' ids.

        Each event gets a fresh id (a ULID); its own ``id``, when set, is the idempotency key: a
        function starts at most once per key within the dedupe window. When unset, ``event.id``
        becomes the stored id. ``internal`` allows reserved names; ``only_if_wanted`` drops events
        that no function and no wait listens to (runs' lifecycle events, sent on every run's end).
        """
        from sdk.errors import InvalidEventError

        if not internal:
            for i, event in enumerate(events):
                if event.name.startswith(RESERVED_PREFIXES):
                    where = f"events[{i}]" if len(events) > 1 else "event"
                    raise InvalidEventError(f"{where}.name: names starting with 'inngest/' or 'stepq/' are reserved")
        at = now_ms()
        ids = [new_ulid(at) for _ in events]
        stored = [
            Event(e.name, e.data, e.id or event_id, e.ts or at, e.v, e.user)
            for e, event_id in zip(events, ids, strict=True)
        ]
        routes = await self.registry.route(e.name for e in stored)
        if only_if_wanted:
            waited = await waits.waited_names(self.redis, {e.name for e in stored})
            keep = [i for i, e in enumerate(stored) if routes.get(e.name) or e.name in waited]
            events, stored, ids = [events[i] for i in keep], [stored[i] for i in keep], [ids[i] for i in keep]
            if not stored:
                return []
        retention = self.store.limits.retention_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id, event in zip(ids, stored, strict=True):
                pipe.set(keys.event(event_id), pack(event.to_dict()), ex=retention)
                pipe.zadd(keys.EVENTS, {event_id: at})
                # before matching waits, so a wait registered meanwhile finds it by looking back
                await matching.record_recent(pipe, event.name, event_id, at)
            pipe.zremrangebyscore(keys.EVENTS, "-inf", at - retention * 1000)
            for event_id, original, event in zip(ids, events, stored, strict=True):
                event_dict = event.to_dict()
                bindings = Bindings(event=event_dict)  # converted once, on the first filter
                for fn in routes.get(event.name, []):
                    if not triggered(fn, event.name, bindings):
                        continue
                    run_id = new_ulid(at)
                    await self.store.create_run(
                        run_id=run_id,
                        fn_slug=fn.slug,
                        app_id=fn.app_id,
                        queue_id=fn.config.get("queue") or fn.app_id,
                        events=[event],
                        event_ids=[event_id],
                        dedupe_key=original.id or None,
                        rules=waits.cancel_registrations(run_id, fn.config, event_dict, at),
                        pipe=pipe,
                    )
            await pipe.execute()
        await matching.deliver(self, [e.to_dict() for e in stored])
        return ids
