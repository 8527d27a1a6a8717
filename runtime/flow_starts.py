"""Flow control of run starts: rate limit, idempotency, throttle and singleton (issue 11).

Each is decided when a run would be created, inside the script that creates it (create_run.lua,
with runtime/lua/flow_starts.lua), so the decision and the run are one atomic write. This module
evaluates the function's key expressions for the event (``runtime/flow_keys.key_of``) and builds
the script's checks (``start_checks``); the Lua applies them:

- **Rate limit** (``RateLimit(limit, period, key)``): at most ``limit`` runs start in any window of
  ``period`` (a sliding window, counted in buckets of a hundredth of the period: a start frees its
  place at most 1% of the period late, never early). An event over the limit starts no run: its
  run-list entry has status ``skipped`` and the reason. Inngest uses a GCRA with a burst of
  ``limit / 10``, which lets more than ``limit`` through in a window after a burst; stepq keeps the
  documented bound exactly and lets a burst of up to ``limit`` through at once.
- **Idempotency** (``idempotency="event.data.cart_id"``): at most one run per key value within the
  window (``Limits.idempotency_s``: ``STEPQ_IDEMPOTENCY_TTL_S``, default 24 h), counted from the
  run it started. Later events are skipped ("idempotent duplicate of run X"). Distinct from the
  event-id dedupe, which collapses resends of one event.
- **Throttle** (``Throttle(limit, period, key, burst)``): delays run *starts*, FIFO per key, drops
  nothing. GCRA: one start per ``period / limit``, ``burst`` of them at once (as Inngest documents
  it; its code lets ``limit + burst`` start at once from idle, which stepq does not copy). The run is
  created at once (status queued) and its first job is queued for the time the throttle allows; its
  record says why it waits (``held``, ``held_until``).
- **Singleton** (``Singleton(key, mode)``): at most one active (not ended) run per key. ``skip``: a
  new run is skipped while one is active; ``cancel``: the active run is cancelled ("singleton:
  replaced by <new run>") and the new one starts, in the same script. The key is released by the
  run's end (close_run in the prelude).

A key expression that evaluates to null (or cannot be evaluated: a field the event lacks) is a key
value of its own, ``null``: such events share one limit (Inngest leaves a rate-limit key of false
unlimited; stepq limits every value alike).

Which runs: every run of the function, whether an event, a cron tick or an invoke started it (as
Inngest applies rate limit, throttle and singleton to all of a function's runs); idempotency keys
evaluate over the run's event like any key (a cron tick's ``inngest/scheduled.timer``, an invoke's
``inngest/function.invoked``). An invoked run that is skipped fails its parent's invoke step with a
``FunctionSkipped`` error naming the reason. What the checks did (``StartOutcomes``) is announced
by ``lifecycle.announce_starts``: ``stepq/function.skipped`` events, and the ends of replaced runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from stepq.durations import to_duration_str
from stepq.expressions import Bindings
from stepq.flow_spec import FlowControl

from . import keys
from .flow_keys import key_of
from .limits import Limits
from .shards import shard_of

#: The event emitted for every start that flow control skipped (only stored when something wants it).
FUNCTION_SKIPPED = "stepq/function.skipped"
#: A rate limit counts starts in this many buckets per period (see the module docstring).
RATE_BUCKETS = 100


@dataclasses.dataclass(frozen=True, slots=True)
class StartChecks:
    """What create_run.lua checks and charges for one run: ``count`` checks, their KEYS and ARGV."""

    keys: tuple[str, ...] = ()
    args: tuple[Any, ...] = ()
    count: int = 0


#: A function with no start limits.
NONE = StartChecks()


def governs_starts(flow: FlowControl) -> bool:
    """Whether the function has a limit this module applies."""
    return bool(flow.rate_limit or flow.idempotency or flow.throttle or flow.singleton)


def start_checks(flow: FlowControl, slug: str, run_id: str, bindings: Bindings, limits: Limits) -> StartChecks:
    """The checks of a new run ``run_id`` of function ``slug``, its keys evaluated for ``bindings``
    (``event``). Each key is built in the run's shard (see ``keys.flow_start``)."""
    if not governs_starts(flow):
        return NONE
    shard = shard_of(run_id)
    out_keys: list[str] = []
    args: list[Any] = []
    count = 0
    if flow.idempotency is not None:
        value = key_of(flow.idempotency, bindings)
        out_keys.append(keys.flow_start(shard, "idem", slug, value.digest))
        args += ["idem", limits.idempotency_s, value.shown]
        count += 1
    if flow.rate_limit is not None:
        rate = flow.rate_limit
        value = key_of(rate.key, bindings)
        out_keys += [
            keys.flow_start(shard, "rate", slug, value.digest),
            keys.flow_start(shard, "rate_n", slug, value.digest),
        ]
        width = max(1, rate.period_ms // RATE_BUCKETS)
        per = to_duration_str(dt.timedelta(milliseconds=rate.period_ms))
        args += ["rate", rate.limit, rate.period_ms, width, per, value.shown]
        count += 1
    if flow.singleton is not None:
        value = key_of(flow.singleton.key, bindings)
        out_keys.append(keys.flow_start(shard, "singleton", slug, value.digest))
        args += ["singleton", flow.singleton.mode, value.shown]
        count += 1
    if flow.throttle is not None:
        throttle = flow.throttle
        value = key_of(throttle.key, bindings)
        out_keys.append(keys.flow_start(shard, "throttle", slug, value.digest))
        args += ["throttle", throttle.limit, throttle.period_ms, throttle.burst, value.shown]
        count += 1
    return StartChecks(tuple(out_keys), tuple(args), count)


@dataclasses.dataclass(frozen=True, slots=True)
class StartOutcomes:
    """What flow control did to the runs one write created (ingest_events.lua's last three lists)."""

    #: (run id, reason) of each start it skipped.
    skipped: tuple[tuple[str, str], ...] = ()
    #: Runs a singleton in cancel mode cancelled for a new one.
    replaced: tuple[str, ...] = ()
    #: Runs those ends failed besides (parents failed by their child's result), and the outbox
    #: messages the write left to deliver (marked: runtime/outbox.py).
    ended: tuple[str, ...] = ()

    @classmethod
    def of(cls, tail: Sequence[Any]) -> StartOutcomes:
        if len(tail) < 3:
            return cls()
        skipped, replaced, ended = tail[:3]
        pairs = tuple((text_of(skipped[i]), text_of(skipped[i + 1])) for i in range(0, len(skipped) - 1, 2))
        return cls(pairs, tuple(text_of(r) for r in replaced), tuple(text_of(r) for r in ended))

    @classmethod
    def of_create_run(cls, reply: Any) -> StartOutcomes:
        """create_run.lua's own reply (a run created alone, not by an ingest)."""
        ended = tuple(text_of(r) for r in reply[3]) if len(reply) > 3 and reply[3] else ()
        if int(reply[0]) == 2:
            return cls(skipped=((text_of(reply[1]), text_of(reply[2])),), ended=ended)
        if int(reply[0]) == 1 and len(reply) > 2 and reply[2]:
            return cls(replaced=(text_of(reply[2]),), ended=ended)
        return cls(ended=ended)

    def __bool__(self) -> bool:
        return bool(self.skipped or self.replaced or self.ended)


def text_of(raw: Any) -> str:
    """A reply item as text."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
