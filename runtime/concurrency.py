"""Concurrency limits as a run carries them: which slots its steps take, and its lane.

A function's limits (``FlowControl.concurrency``: steps executing at once, Inngest's meaning;
``run_concurrency``: runs active at once, stepq's opt-in run-level limit) become, per run, a list of
*concurrency keys*, each with its limit, evaluated once from the run's triggering event and stored
in the run's record. The Lua side (runtime/lua/slots.lua) does the rest atomically: a job takes a
slot of each key when it is claimed, gives it back when it ends, and waits in its *lane* (the runs
sharing the same keys) while a key is full, until a release hands it the slot.

Key ids follow Inngest's scopes (``util/concurrency_key.go``): a ``fn`` key belongs to the
function (``f:<function>:<value digest>``); ``env`` and ``account`` keys are shared by every
function naming the same value (``e:<digest>``, ``a:<digest>``; stepq has one environment per
Redis, so both share across the deployment). Run-level keys get an ``r`` in front. Each function
compares the shared count with its own limit.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

from stepq.expressions import Bindings
from stepq.flow_spec import ConcurrencyLimit, FlowControl

from .flow_keys import key_of, priority_of

_SCOPE_PREFIX = {"fn": "f", "env": "e", "account": "a"}


@dataclasses.dataclass(frozen=True, slots=True)
class RunSlots:
    """What a run's record keeps of its flow control (empty strings: none).

    ``step``/``run``: its concurrency keys, one ``<limit>\\t<key id>\\t<shown value>`` line each;
    ``lane``: the id of the lane its waiting jobs queue in; ``priority``: seconds its due-now
    jobs go ahead (negative: later)."""

    step: str = ""
    run: str = ""
    lane: str = ""
    priority: int = 0


NONE = RunSlots()


def key_id(limit: ConcurrencyLimit, slug: str, bindings: Bindings, *, run_level: bool) -> tuple[str, str]:
    """The id of the concurrency key ``limit`` gives this run, and its value as shown to people."""
    value = key_of(limit.key, bindings)
    scope = _SCOPE_PREFIX[limit.scope]
    owner = f"{slug}:" if limit.scope == "fn" else ""
    return f"{'r' if run_level else ''}{scope}:{owner}{value.digest}", value.shown


def _lines(limits: Sequence[ConcurrencyLimit], slug: str, bindings: Bindings, *, run_level: bool) -> list[str]:
    out = []
    for limit in limits:
        kid, shown = key_id(limit, slug, bindings, run_level=run_level)
        out.append(f"{limit.limit}\t{kid}\t{shown}")
    return out


def run_slots(slug: str, flow: FlowControl, event: dict[str, object] | None) -> RunSlots:
    """A new run's slots and priority, from its function's flow control and triggering event."""
    if not (flow.concurrency or flow.run_concurrency or flow.priority):
        return NONE
    bindings = Bindings(event=event or {})
    step = _lines(flow.concurrency, slug, bindings, run_level=False)
    run = _lines(flow.run_concurrency, slug, bindings, run_level=True)
    lane = ""
    if step or run:
        ids = "\n".join(line.split("\t")[1] for line in step + run)
        lane = hashlib.blake2b(ids.encode(), digest_size=10).hexdigest()
    priority = priority_of(flow.priority.run, bindings) if flow.priority else 0
    return RunSlots("\n".join(step), "\n".join(run), lane, priority)
