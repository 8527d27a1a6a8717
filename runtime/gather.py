"""Debounce and event batching: events that gather into one run (Inngest's ``debounce`` and
``batchEvents``).

The run is created by the first event, with its first job delayed to the time it fires, so
nothing polls: the queue's mover wakes for that job as for any delayed job. Each later event of
the same key joins it in the same Lua call that stores the event (runtime/lua/gather.lua, part of
create_run.lua): a debounced event replaces the run's event and moves its job later, a batched one
is appended to the run's events, and a full batch moves its job to now. Whether the run is still
open is read from the queue itself: its first job is queued, not yet due and not claimed. Once a
worker claimed the job, or its time came, the next event opens a new run. So an event joins
exactly one run, and a batch (or debounce) starts once: its run has one first job, claimed by one
claim, however a full batch and its timeout meet.

Semantics (Inngest's, with sources in /work/shared/reference/flow-control.md):

- Debounce: one run with the *last* event, ``period`` after the last event; ``timeout`` caps the
  delay from the first event. An event whose ``ts`` is older than the run's event is ignored
  (Inngest PR #975): it neither replaces the event nor moves the run later (it is stored in the
  event log as any event, and counted on the run as ignored).
- Batching: one run with up to ``max_size`` events, when the batch is full or ``timeout`` after
  its first event (the timeout does not slide); a batch whose events reach ``BATCH_MAX_BYTES`` (or
  the run's state limit) starts at once. Events for which ``if`` is false run unbatched.
- Both: one run per key value (``key``); event-id dedupe does not apply (Inngest ignores it too).
  Flow-control checks made when a run is created apply once, when the first event opens the run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from stepq.expressions import Bindings
from stepq.flow_spec import FlowControl

from . import keys
from .connection import RedisClient
from .flow_keys import evaluate, key_of
from .limits import Limits
from .placement import shard_for
from .shards import new_run_id

#: A batch starts at once when its events reach this many bytes (Inngest's 10 MiB), or the run's
#: state limit if that is lower.
BATCH_MAX_BYTES = 10 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Gather:
    """How one event gathers into a run of one function: the pointer key naming the open run of its
    key value, the run's shard, and what create_run.lua's ``gather`` argument says."""

    #: ``keys.debounce`` or ``keys.batch`` for the function and the key's value.
    pointer: str
    shard: int
    #: create_run's ``gather`` argument (see runtime/lua/gather.lua).
    arg: str

    def run_id(self, now_ms: int) -> str:
        """A new run's id, in the pointer's shard."""
        return new_run_id(now_ms, self.shard)


def gathering(flow: FlowControl, slug: str, event: dict[str, Any], bindings: Bindings, limits: Limits) -> Gather | None:
    """How ``event`` gathers into a run of function ``slug`` (None: it starts a run of its own now)."""
    if flow.debounce is not None:
        spec = flow.debounce
        value = key_of(spec.key, bindings)
        shard = shard_for(slug, flow, bindings)  # the key's shard, or the function's (runtime/placement.py)
        ts = event.get("ts")
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
        arg = f"debounce|{spec.period_ms}|{spec.timeout_ms or 0}|{ts}|{value.shown}"
        return Gather(keys.debounce(shard, slug, value.digest), shard, arg)
    if flow.batch is not None:
        spec_b = flow.batch
        if spec_b.if_exp is not None and evaluate(spec_b.if_exp, bindings) is not True:
            return None  # Inngest: events for which ``if`` is false run unbatched
        value = key_of(spec_b.key, bindings)
        shard = shard_for(slug, flow, bindings)
        cap = min(BATCH_MAX_BYTES, limits.max_state_bytes)
        arg = f"batch|{spec_b.max_size}|{spec_b.timeout_ms}|{cap}|{value.shown}"
        return Gather(keys.batch(shard, slug, value.digest), shard, arg)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Gathered:
    """What a run's record says of the events it gathers (None from :func:`gathered` for a run
    that gathers none)."""

    #: ``debounce`` or ``batch``.
    kind: str
    #: The key's value as shown to people ('' for a function without a key).
    key: str
    #: When the run fires (ms since the epoch), unless a new event moves it.
    until_ms: int
    #: Events gathered: the batch's size, or how many events the debounce saw.
    events: int
    #: The batch's maximum size (0 for a debounce).
    max_size: int
    #: Debounced events ignored because they were older than the run's event.
    ignored: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def waiting(self, now_ms: int) -> str:
        """Why a run that has not started yet waits, for people (``now_ms``: the reader's clock)."""
        until = _time(self.until_ms)
        key = f" (key {self.key})" if self.key else ""
        what = "debounced" if self.kind == "debounce" else f"batch of {self.events}/{self.max_size}"
        if self.until_ms <= now_ms:
            return f"{what}{key}: fired at {until}, waiting for a worker"
        if self.kind == "debounce":
            return f"debounced until {until}{key}"
        return f"batching {self.events}/{self.max_size} until {until}{key}"

    def summary(self) -> str:
        """What the run gathered, once it started."""
        key = f" (key {self.key})" if self.key else ""
        if self.kind == "debounce":
            plural = "s" if self.events != 1 else ""
            return f"debounced: ran with the last of {self.events} event{plural}{key}"
        return f"batch of {self.events} event{'s' if self.events != 1 else ''} (max {self.max_size}){key}"


def gathered(raw: dict[bytes, bytes]) -> Gathered | None:
    """The gathering a run's record (``HGETALL``) holds, written by runtime/lua/gather.lua."""
    kind = raw.get(b"gather")
    if kind is None:
        return None

    def number(field: bytes) -> int:
        try:
            return int(raw.get(field, b"0"))
        except ValueError:
            return 0

    return Gathered(
        kind=kind.decode(errors="replace"),
        key=raw.get(b"gather_key", b"").decode(errors="replace"),
        until_ms=number(b"gather_until"),
        events=number(b"gather_n"),
        max_size=number(b"gather_max"),
        ignored=number(b"gather_ignored"),
    )


async def fired_at(redis: RedisClient, run_id: str) -> int | None:
    """When a debounced or batched run fired (its ``Timeouts.start`` counts from then, as Inngest
    creates such a run only then); None for a run that gathers no events."""
    raw: bytes | None = await redis.hget(keys.run(run_id), "gather_until")  # type: ignore[misc]
    return int(raw) if raw is not None and raw.isdigit() else None


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
