"""Where a new run lives: the shard chosen from its function's flow control and its event.

Flow control keeps its state (counts, tokens, the run holding a key, the open batch...) in keys
tagged with a shard, and a Lua script sees one shard only. So a limit is exact when every run that
shares its state is created in one shard; this module picks that shard. Per function (a
:class:`Rule`, from its flow control alone) and then per run (from the event):

- **spread**: no flow-control state (no limit, or only a priority). Runs go to a random shard, or,
  when the event has an id (event-id dedupe), to the shard of ``(function, event id)``, so that
  resends of one event meet their dedupe key.
- **by key**: every piece of state the function keeps (its throttle, rate limit, idempotency,
  singleton, debounce, batch, concurrency limits of scope ``fn``) is keyed by one and the same
  expression. Runs with different values of it share no state, so each value has its own shard
  (the hash of function and value): a hot function spreads over its key's values, and each limit
  stays exact because all the runs of one value meet.
- **whole function**: a limit without a key (a function-wide concurrency or throttle...), or limits
  whose keys are different expressions (a run's state then spans several values). Every run of the
  function is created in one shard, its slug's hash: exact, at the price of serializing the
  function on one shard.
- **shared**: a concurrency limit of scope ``env`` or ``account`` (its count is shared by every
  function naming the same key value). Which functions share a value is not known from one
  function's config, so every run of every such function is created in one fixed shard.

Event-id dedupe is exact among the events that place together. With *spread* and *whole function*
rules and *shared*, that is every event: one event id, one shard. With a *by key* rule the dedupe
key lives in the key value's shard, so two different events carrying the same id but different key
values may both start a run (a resend of one event carries the same data, so it meets the first).

Which runs follow the rule: every new run of a function (an event's, a cron tick's, an invoke's).
A replay or a resume (runtime/actions.py) is created in the old run's shard, which the fork script
needs; :func:`placed` says whether that is still where the function's rule puts it.

Pure: no I/O. The shard count is the process's (``shards.SHARD_COUNT``) unless given.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import random

from stepq.expressions import Bindings
from stepq.flow_spec import FlowControl

from . import shards
from .flow_keys import key_of

__all__ = ["Placement", "Rule", "new_run_id", "placed", "rule_of", "shard_for"]


class Rule(enum.Enum):
    """How a function's runs are placed (see the module docstring)."""

    SPREAD = "spread"
    KEY = "key"
    FUNCTION = "function"
    SHARED = "shared"


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """A function's placement rule: ``expression`` is the key expression of a ``KEY`` rule; ``why``
    says, for people, what decided it (``throttle without a key``...)."""

    rule: Rule
    expression: str | None = None
    why: str = ""

    def describe(self) -> str:
        """The rule as shown to people."""
        if self.rule is Rule.SPREAD:
            return "spread over all shards (no flow-control state)"
        if self.rule is Rule.KEY:
            return f"one shard per value of {self.expression} ({self.why})"
        if self.rule is Rule.FUNCTION:
            return f"one shard for all its runs ({self.why})"
        return f"the shared shard ({self.why})"


#: The name whose hash picks the shard of functions with ``env`` or ``account`` concurrency scopes.
SHARED_NAME = "stepq:shared-concurrency"


def _keyed_state(flow: FlowControl) -> list[tuple[str, str | None]]:
    """(what, key expression or None) of each piece of per-function state the flow control keeps."""
    out: list[tuple[str, str | None]] = []
    for level, limits in (("concurrency", flow.concurrency), ("run concurrency", flow.run_concurrency)):
        out += [(level, limit.key) for limit in limits]
    for what, spec in (
        ("throttle", flow.throttle),
        ("rate limit", flow.rate_limit),
        ("singleton", flow.singleton),
        ("debounce", flow.debounce),
        ("batch", flow.batch),
    ):
        if spec is not None:
            out.append((what, spec.key))
    if flow.idempotency is not None:
        out.append(("idempotency", flow.idempotency))
    # an expression's surrounding blanks do not change it; anything else might, so it counts as another key
    return [(what, key.strip() if key is not None else None) for what, key in out]


@functools.lru_cache(maxsize=1024)
def rule_of(flow: FlowControl) -> Placement:
    """The placement rule of a function with flow control ``flow`` (cached: specs are immutable)."""
    shared = [limit.scope for limit in (*flow.concurrency, *flow.run_concurrency) if limit.scope != "fn"]
    if shared:
        return Placement(Rule.SHARED, why=f"concurrency of scope {shared[0]}, shared with other functions")
    state = _keyed_state(flow)
    if not state:
        return Placement(Rule.SPREAD)
    whole = [what for what, key in state if key is None]
    if whole:
        return Placement(Rule.FUNCTION, why=f"{whole[0]} without a key")
    expressions = {key for _, key in state}
    if len(expressions) > 1:
        return Placement(Rule.FUNCTION, why="limits with different keys")
    (expression,) = expressions
    return Placement(Rule.KEY, expression, why=", ".join(what for what, _ in state))


def _hashed(text: str, count: int) -> int:
    """A shard from ``text``: uniform, stable across processes and versions (not Python's hash)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_for(
    slug: str,
    flow: FlowControl | None,
    bindings: Bindings,
    dedupe_key: str | None = None,
    *,
    count: int | None = None,
    rng: random.Random | None = None,
) -> int:
    """The shard of a new run of function ``slug``: ``flow`` its flow control (None: none),
    ``bindings`` its event (``event``), ``dedupe_key`` its event-id dedupe key if it has one,
    ``count`` the shards to choose among (the process's by default), ``rng`` the random source of
    a spread run with no dedupe key."""
    count = shards.SHARD_COUNT if count is None else count
    if count == 1:
        return 0
    rule = rule_of(flow) if flow else Placement(Rule.SPREAD)
    if rule.rule is Rule.SPREAD:
        if dedupe_key:
            return _hashed(f"dedupe\0{slug}\0{dedupe_key}", count)
        return (rng or random).randrange(count)
    if rule.rule is Rule.KEY:
        return _hashed(f"key\0{slug}\0{key_of(rule.expression, bindings).digest}", count)
    if rule.rule is Rule.FUNCTION:
        return _hashed(f"function\0{slug}", count)
    return _hashed(SHARED_NAME, count)


def new_run_id(
    slug: str,
    flow: FlowControl | None,
    bindings: Bindings,
    dedupe_key: str | None = None,
    now_ms: int | None = None,
    *,
    count: int | None = None,
) -> str:
    """The id of a new run of ``slug``, in the shard :func:`shard_for` picks."""
    return shards.new_run_id(now_ms, shard_for(slug, flow, bindings, dedupe_key, count=count))


def placed(
    run_id: str,
    slug: str,
    flow: FlowControl | None,
    bindings: Bindings,
    dedupe_key: str | None = None,
    *,
    count: int | None = None,
) -> bool:
    """Whether run ``run_id`` is in a shard :func:`shard_for` could pick for it (any shard of the
    process's count for a spread run without a dedupe key)."""
    count = shards.SHARD_COUNT if count is None else count
    shard = shards.shard_of(run_id)
    if shard >= count:
        return False
    rule = rule_of(flow) if flow else Placement(Rule.SPREAD)
    if rule.rule is Rule.SPREAD and not dedupe_key:
        return True
    return shard == shard_for(slug, flow, bindings, dedupe_key, count=count)
