"""Events about runs themselves: ``stepq/function.finished`` on every end, ``.failed`` on failure.

Inngest's names (``inngest/function.*``) are sent too, so failure handlers of apps written with
Inngest's SDKs run on stepq. Each event's id derives from the run id, so a repeated emission starts
no handler twice; and lifecycle events that no function or wait listens to are not stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from stepq.client import FUNCTION_FAILED, FUNCTION_FINISHED
from stepq.event import Event

from . import keys, metrics, routine_log, store
from .codec import unpack
from .connection import RedisClient
from .flow_starts import FUNCTION_SKIPPED, StartOutcomes, text_of
from .run_status import RunStatus

log = structlog.get_logger("stepq.lifecycle")

#: The events stepq sends only if some function or wait wants them (``only_if_wanted``).
SENT_IF_WANTED = (
    FUNCTION_FINISHED,
    "inngest/function.finished",
    FUNCTION_FAILED,
    "inngest/function.failed",
    FUNCTION_SKIPPED,
)


class Ingest(Protocol):
    """What a run's end needs of ``stepq.runtime.ingest.Ingest``: sending events, which may in turn
    cancel runs and end them. A protocol, so that ingestion can use this module without a cycle."""

    @property
    def redis(self) -> RedisClient: ...

    @property
    def store(self) -> store.RunStore: ...

    async def send(
        self, events: Sequence[Event], *, internal: bool = False, only_if_wanted: bool = False
    ) -> list[str]: ...


async def run_ended(
    ingest: Ingest,
    run_id: str,
    status: RunStatus,
    *,
    fn_slug: str | None = None,
    event: dict[str, Any] | None = None,
    output: Any = None,
    error: Any = None,
) -> None:
    """Emit the events of a run's end (best effort: the end itself is already recorded)."""
    try:
        if fn_slug is None or event is None:
            fn_slug, event = await _describe(ingest, run_id)
        metrics.run_ended(fn_slug, status)
        data: dict[str, Any] = {"function_id": fn_slug, "run_id": run_id, "status": status, "event": event}
        if status is RunStatus.COMPLETED:
            data["result"] = output
        else:
            data["error"] = error
        names = [FUNCTION_FINISHED, "inngest/function.finished"]
        if status is RunStatus.FAILED:
            names += [FUNCTION_FAILED, "inngest/function.failed"]
        events = [Event(name=name, data=data, id=f"{name}:{run_id}") for name in names]
        await ingest.send(events, internal=True, only_if_wanted=True)
    except Exception:
        log.exception("run.notify_failed", run_id=run_id)


async def cancel(ingest: Ingest, run_id: str, reason: str) -> store.Outcome:
    """Cancel a run (see ``RunStore.cancel``) and emit its end."""
    written = await ingest.store.cancel(run_id, reason)
    if written.outcome is store.Outcome.OK:
        error = {"name": "Cancelled", "message": reason, "stack": ""}
        await run_ended(ingest, run_id, RunStatus.CANCELLED, error=error)
    await runs_failed(ingest, written.ended)
    return written.outcome


async def runs_failed(ingest: Ingest, run_ids: Sequence[str]) -> None:
    """Emit the ends of runs a write failed on its own (a value broke a run's state limit), and
    deliver the outbox messages the write left for other shards (marked among them: a script's
    ``ends``, see runtime/outbox.py)."""
    from . import outbox  # outbox's deliveries announce through this module

    failed, messages = outbox.split(run_ids)
    if messages:
        await outbox.deliver(ingest, messages)
    for run_id in failed:
        raw = await ingest.redis.hget(keys.run(run_id), "error")  # type: ignore[misc]
        await run_ended(ingest, run_id, RunStatus.FAILED, error=unpack(raw) if raw else None)


async def _describe(ingest: Ingest, run_id: str) -> tuple[str, dict[str, Any]]:
    async with ingest.redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.run(run_id), "fn")
        pipe.get(keys.events(run_id))
        fn, blob = await pipe.execute()
    events = unpack(blob) if blob else []
    return (fn.decode() if fn else ""), (events[0] if events else {})


async def announce_starts(
    ingest: Ingest, outcomes: StartOutcomes, described: dict[str, tuple[str, dict[str, Any]]]
) -> None:
    """Emit what flow control did (best effort: it is recorded already): ``stepq/function.skipped``
    per skipped start (``described``: run id -> (function slug, event)), and the ends of the runs a
    singleton cancelled or that failed with them (``inngest/function.finished``...)."""
    if not outcomes:
        return
    try:
        events = []
        if outcomes.skipped:
            # one line per write, not per start: a flood of rate-limited events must not flood the log
            run_id, reason = outcomes.skipped[0]
            if routine_log.on():
                log.debug("runs.skipped", count=len(outcomes.skipped), first_run_id=run_id, first_reason=reason)
        for run_id, reason in outcomes.skipped:
            slug, event = described.get(run_id, ("", {}))
            metrics.start_skipped(slug, reason)
            data = {"function_id": slug, "run_id": run_id, "status": RunStatus.SKIPPED.value, "reason": reason}
            events.append(
                Event(name=FUNCTION_SKIPPED, data={**data, "event": event}, id=f"{FUNCTION_SKIPPED}:{run_id}")
            )
        if events:
            await ingest.send(events, internal=True, only_if_wanted=True)
        for run_id in outcomes.replaced:
            reason = await ingest.redis.hget(keys.run(run_id), "reason")  # type: ignore[misc]
            message = text_of(reason) if reason else "singleton: replaced"
            if routine_log.on():
                log.info("run.replaced", run_id=run_id, reason=message)
            error = {"name": "Cancelled", "message": message, "stack": ""}
            await run_ended(ingest, run_id, RunStatus.CANCELLED, error=error)
        await runs_failed(ingest, outcomes.ended)
    except Exception:
        log.exception("flow.announce_failed")
