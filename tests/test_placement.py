"""Where new runs are placed (runtime/placement.py): pure, no Redis.

The property that matters: any two runs sharing a piece of flow-control state (a start limit's key,
a concurrency key, a debounce or batch pointer, an event-id dedupe key) are placed in one shard, so
one Lua script sees all of it; and runs that share nothing spread."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepq.expressions import Bindings
from stepq.flow_spec import (
    BatchSpec,
    ConcurrencyLimit,
    DebounceSpec,
    FlowControl,
    PrioritySpec,
    RateLimitSpec,
    SingletonSpec,
    ThrottleSpec,
)
from stepq.runtime import flow_starts, shards
from stepq.runtime.concurrency import run_slots
from stepq.runtime.flow_keys import key_of
from stepq.runtime.gather import gathering
from stepq.runtime.limits import Limits
from stepq.runtime.placement import Rule, new_run_id, placed, rule_of, shard_for
from stepq.runtime.shards import SHARD_TAGS, shard_of

USER, ACCOUNT = "event.data.user", "event.data.account"
HOUR = 3_600_000


def on(event_data: dict[str, Any], event_id: str = "") -> Bindings:
    return Bindings(event={"name": "e", "data": event_data, "id": event_id, "ts": 1})


@pytest.mark.parametrize(
    ("flow", "rule", "expression"),
    [
        (FlowControl(), Rule.SPREAD, None),
        (FlowControl(priority=PrioritySpec("event.data.p")), Rule.SPREAD, None),
        (FlowControl(throttle=ThrottleSpec(1, 1000, USER)), Rule.KEY, USER),
        (FlowControl(idempotency=USER), Rule.KEY, USER),
        (FlowControl(debounce=DebounceSpec(1000, USER)), Rule.KEY, USER),
        (FlowControl(batch=BatchSpec(5, 1000, USER, if_exp="event.data.go")), Rule.KEY, USER),
        # several kinds of state under one expression (blanks around it do not make another key)
        (
            FlowControl(
                concurrency=(ConcurrencyLimit(2, USER),),
                run_concurrency=(ConcurrencyLimit(1, f" {USER} "),),
                rate_limit=RateLimitSpec(5, HOUR, USER),
                singleton=SingletonSpec("skip", USER),
                priority=PrioritySpec("event.data.p"),
            ),
            Rule.KEY,
            USER,
        ),
        (FlowControl(concurrency=(ConcurrencyLimit(2),)), Rule.FUNCTION, None),
        (FlowControl(throttle=ThrottleSpec(1, 1000)), Rule.FUNCTION, None),
        (FlowControl(debounce=DebounceSpec(1000)), Rule.FUNCTION, None),
        (FlowControl(throttle=ThrottleSpec(1, 1000, USER), concurrency=(ConcurrencyLimit(2),)), Rule.FUNCTION, None),
        (FlowControl(throttle=ThrottleSpec(1, 1000, USER), idempotency=ACCOUNT), Rule.FUNCTION, None),
        (FlowControl(concurrency=(ConcurrencyLimit(2, USER, "env"),)), Rule.SHARED, None),
        (FlowControl(run_concurrency=(ConcurrencyLimit(2, None, "account"),)), Rule.SHARED, None),
        (
            FlowControl(concurrency=(ConcurrencyLimit(2, USER), ConcurrencyLimit(9, USER, "account"))),
            Rule.SHARED,
            None,
        ),
    ],
)
def test_rule_of_a_function(flow: FlowControl, rule: Rule, expression: str | None) -> None:
    placed_by = rule_of(flow)
    assert (placed_by.rule, placed_by.expression) == (rule, expression)
    assert placed_by.describe()


def test_one_shard_places_everything_in_shard_0() -> None:
    keyed = FlowControl(throttle=ThrottleSpec(1, 1000, USER))
    for flow in (None, keyed, FlowControl(concurrency=(ConcurrencyLimit(1),))):
        assert {shard_for("f", flow, on({"user": u}), f"id{u}", count=1) for u in range(50)} == {0}


def test_a_function_without_flow_control_spreads_and_dedupe_keys_meet() -> None:
    rng = random.Random(7)
    assert {shard_for("f", FlowControl(), on({}), count=8, rng=rng) for _ in range(400)} == set(range(8))
    by_id = {shard_for("f", None, on({"x": i}), "the-id", count=8) for i in range(20)}
    assert len(by_id) == 1  # the same event id, whatever the data: one shard
    assert len({shard_for("f", None, on({}), f"id-{i}", count=8) for i in range(400)}) == 8


def test_a_keyed_function_spreads_over_its_values_and_each_value_stays_in_one_shard() -> None:
    flow = FlowControl(concurrency=(ConcurrencyLimit(1, USER),), throttle=ThrottleSpec(1, 1000, USER))
    per_user = {
        u: {shard_for("hot", flow, on({"user": u, "n": n}), f"e{u}.{n}", count=8) for n in range(10)}
        for u in range(200)
    }
    assert all(len(found) == 1 for found in per_user.values())
    assert set().union(*per_user.values()) == set(range(8))
    # the key is the value, not its type's spelling: "1" and 1 are different values (flow_keys)
    assert key_of(USER, on({"user": "1"})) != key_of(USER, on({"user": 1}))


def test_a_function_wide_limit_keeps_every_run_on_one_shard_and_shared_scopes_meet_across_functions() -> None:
    whole = FlowControl(throttle=ThrottleSpec(1, 1000, USER), concurrency=(ConcurrencyLimit(3),))
    assert len({shard_for("f", whole, on({"user": u}), f"e{u}", count=32) for u in range(100)}) == 1
    # different functions with function-wide limits need not share a shard
    assert len({shard_for(f"f{i}", whole, on({}), count=32) for i in range(100)}) > 1
    env = [
        FlowControl(concurrency=(ConcurrencyLimit(2, USER, "env"),)),
        FlowControl(run_concurrency=(ConcurrencyLimit(1, ACCOUNT, "account"),)),
    ]
    found = {shard_for(f"f{i}", env[i % 2], on({"user": i, "account": i}), count=32) for i in range(50)}
    assert len(found) == 1


def test_new_run_id_names_the_placed_shard_and_placed_checks_it() -> None:
    flow = FlowControl(rate_limit=RateLimitSpec(5, HOUR, USER))
    bindings = on({"user": "ann"})
    run_id = new_run_id("f", flow, bindings, count=8)
    assert shard_of(run_id) == shard_for("f", flow, bindings, count=8)
    assert placed(run_id, "f", flow, bindings, count=8)
    other = next(s for s in range(8) if s != shard_of(run_id))
    moved = run_id[:-1] + shards.new_run_id(shard=other)[-1]
    assert not placed(moved, "f", flow, bindings, count=8)
    # a spread run may be anywhere among the shards served, but not beyond them
    assert placed(moved, "f", FlowControl(), bindings, count=8)
    assert not placed(shards.new_run_id(shard=9), "f", FlowControl(), bindings, count=8)
    # with an event-id dedupe key, only its shard
    dedupe = shard_for("f", FlowControl(), bindings, "k", count=8)
    assert placed(shards.new_run_id(shard=dedupe), "f", None, bindings, "k", count=8)
    assert not placed(shards.new_run_id(shard=(dedupe + 1) % 8), "f", None, bindings, "k", count=8)


# -- the property: runs sharing state meet --------------------------------------------------------

KEYS = [None, USER, ACCOUNT]
keys_st = st.sampled_from(KEYS)


@st.composite
def flows(draw: st.DrawFn) -> FlowControl:
    """Flow control of any shape, keyed by a few expressions (so that keys collide)."""

    def maybe(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(st.none(), strategy))

    limit = st.builds(ConcurrencyLimit, st.integers(1, 3), keys_st, st.sampled_from(["fn", "fn", "env", "account"]))
    return FlowControl(
        concurrency=tuple(draw(st.lists(limit, max_size=2))),
        run_concurrency=tuple(draw(st.lists(limit, max_size=1))),
        throttle=maybe(st.builds(ThrottleSpec, st.just(1), st.just(1000), keys_st)),
        rate_limit=maybe(st.builds(RateLimitSpec, st.just(1), st.just(1000), keys_st)),
        singleton=maybe(st.builds(SingletonSpec, st.just("skip"), keys_st)),
        idempotency=maybe(st.sampled_from([USER, ACCOUNT])),
        debounce=maybe(st.builds(DebounceSpec, st.just(1000), keys_st)),
        batch=maybe(st.builds(BatchSpec, st.just(5), st.just(1000), keys_st)),
        priority=maybe(st.just(PrioritySpec("event.data.user"))),
    )


def state_of(slug: str, flow: FlowControl, bindings: Bindings, dedupe_key: str | None) -> set[str]:
    """The names of the flow-control state a run touches, without their shard tag: the start
    limits' keys and the concurrency keys as the runtime builds them, the debounce or batch
    pointer, the dedupe key."""
    run_id = new_run_id(slug, flow, bindings, count=1)  # any shard: only the tag differs
    tag = "{" + SHARD_TAGS[0] + "}"
    names = {key.replace(tag, "") for key in flow_starts.start_checks(flow, slug, run_id, bindings, Limits()).keys}
    slots = run_slots(slug, flow, dict(bindings.values["event"]))
    names |= {"slot:" + line.split("\t")[1] for line in (slots.step + "\n" + slots.run).splitlines() if line}
    gather = gathering(flow, slug, dict(bindings.values["event"]), bindings, Limits())
    if gather is not None:  # the open debounce's or batch's pointer, as the ingest builds it
        names.add(gather.pointer.replace("{" + SHARD_TAGS[gather.shard] + "}", ""))
    if dedupe_key:
        names.add(f"dedupe:{slug}:{dedupe_key}")
    return names


@settings(max_examples=150, deadline=None)
@given(
    functions=st.lists(flows(), min_size=1, max_size=4),
    events=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.sampled_from(["", "a", "b"])),
        min_size=2,
        max_size=30,
    ),
)
def test_runs_sharing_any_state_are_placed_in_one_shard(
    functions: list[FlowControl], events: list[tuple[int, int, int, str]]
) -> None:
    where: dict[str, set[int]] = {}
    for fn_no, user, account, event_id in events:
        slug, flow = f"fn{fn_no % len(functions)}", functions[fn_no % len(functions)]
        bindings = on({"user": user, "account": account}, event_id)
        dedupe = event_id or None
        shard = shard_for(slug, flow, bindings, dedupe, count=32, rng=random.Random(user))
        for name in state_of(slug, flow, bindings, dedupe):
            where.setdefault(name, set()).add(shard)
    # event-id dedupe is exact among the events that place together: a keyed function's runs of
    # one event id but different key values are the documented exception
    split = {name: shards for name, shards in where.items() if len(shards) > 1}
    for name, _ in split.items():
        slug = name.split(":")[1]
        assert name.startswith("dedupe:") and rule_of(functions[int(slug[2:]) % len(functions)]).rule is Rule.KEY, split
