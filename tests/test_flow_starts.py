"""Flow control of run starts (issue 11): rate limit, idempotency, throttle and singleton, for
in-process functions (tests/apps/flow_starts.py) and served ones (the official inngest SDK).

Real Redis, real worker processes. Each function's first step logs when it ran (tests/apps/
flow_starts.py); the runs' records say what flow control did (status ``skipped`` and a reason, a
throttled run's ``held``), as ``stepq run`` and ``stepq runs`` show them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

import stepq
from stepq.errors import FunctionConfigError
from stepq.expressions import Bindings
from stepq.flow_spec import RateLimitSpec, SingletonSpec, ThrottleSpec
from stepq.runtime import keys
from stepq.runtime.cron import CronScheduler
from stepq.runtime.flow_keys import key_of
from stepq.runtime.queries import RunView
from stepq.runtime.registry import Registry
from stepq.runtime.scripts import libraries, prelude
from stepq.runtime.store import RunStore
from tests.helpers import (
    REDIS_URL,
    STEPQ_CLI,
    StartWorkers,
    read_lines,
    runs_of,
    use_shards,
    wait_for_run,
    wait_for_runs,
)
from tests.http_fixtures import Stack, dev_stack, post_events

APP = "t-flow-starts"


def fn(name: str) -> str:
    return f"{APP}-{name}"


@dataclasses.dataclass(frozen=True)
class Start:
    tag: str
    at: float
    pid: int
    run_id: str


def starts(log: Path) -> list[Start]:
    out = []
    for line in read_lines(log):
        tag, at, pid, run_id = line.split(maxsplit=3)
        out.append(Start(tag, float(at), int(pid), run_id))
    return out


async def wait_starts(log: Path, n: int, timeout: float = 30.0) -> list[Start]:
    deadline = time.monotonic() + timeout
    while len(found := starts(log)) < n:
        assert time.monotonic() < deadline, f"{len(found)} of {n} starts after {timeout} s: {found}"
        await asyncio.sleep(0.02)
    return found


async def views(redis: Redis, name: str) -> list[RunView]:
    return await runs_of(redis, name)


def by_status(found: list[RunView]) -> dict[str, list[RunView]]:
    out: dict[str, list[RunView]] = {}
    for view in found:
        out.setdefault(view.status, []).append(view)
    return out


# -- rate limit --------------------------------------------------------------------------------------


async def test_a_rate_limit_starts_exactly_limit_runs_and_records_the_rest_as_skipped(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("flow_starts")
    log = tmp_path / "rated.log"
    events = [stepq.Event(name="flow/rated", data={"log": str(log), "tag": str(i)}) for i in range(25)]
    event_ids = await sender.send(events)
    found = await views(redis, fn("rated"))
    assert len(found) == 25
    groups = by_status(found)
    skipped = groups.pop("skipped")
    assert len(skipped) == 15
    assert sum(len(v) for v in groups.values()) == 10
    for view in skipped:
        assert view.reason == "rate limited: 10 runs per 1m"
        assert view.ended_ms is not None and view.started_ms is None
        assert not await redis.exists(keys.events(view.run_id))  # no job, no state: only the entry
    await wait_for_runs(redis, [v.run_id for v in found if v.status != "skipped"], ("completed",))
    assert len(starts(log)) == 10
    # the first 10 events of the batch got the runs (in order), the other 15 were turned away
    ran = {e for v in found if v.status != "skipped" for e in v.event_ids}
    assert ran == set(event_ids[:10])
    # a resent event (same id) is not charged again: it finds its skipped entry
    again = await sender.send([stepq.Event(name="flow/rated", data={"log": str(log)}, id="resend-1")])
    again_2 = await sender.send([stepq.Event(name="flow/rated", data={"log": str(log)}, id="resend-1")])
    assert len(await views(redis, fn("rated"))) == 26
    assert again != again_2

    # stepq runs shows why
    out = subprocess.run(
        [*STEPQ_CLI, "runs", "--redis-url", REDIS_URL, "--function", "rated", "--limit", "30"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("rate limited: 10 runs per 1m") == 16, out
    one = subprocess.run(
        [*STEPQ_CLI, "run", skipped[0].run_id, "--redis-url", REDIS_URL], capture_output=True, text=True, check=True
    ).stdout
    assert "status    skipped" in one and "skipped   rate limited: 10 runs per 1m" in one, one


async def test_a_keyed_rate_limit_counts_each_key_apart_and_frees_places_as_the_window_slides(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """limit 2 per 2 s per event.data.user; events without a user share the key null."""
    start_workers("flow_starts")
    log = tmp_path / "keyed.log"

    def event(user: str | None, tag: str) -> stepq.Event:
        data: dict[str, object] = {"log": str(log), "tag": tag}
        if user is not None:
            data["user"] = user
        return stepq.Event(name="flow/rated-keyed", data=data)

    sent = time.monotonic()
    await sender.send([event(u, f"{u}{i}") for u in ("a", "b", None) for i in range(3)])
    first = await views(redis, fn("rated-keyed"))
    reasons = sorted(v.reason or "" for v in first if v.status == "skipped")
    assert reasons == [
        'rate limited: 2 runs per 2s (key "a")',
        'rate limited: 2 runs per 2s (key "b")',
        "rate limited: 2 runs per 2s (key null)",  # the events without a user: their own key, null
    ]
    await wait_starts(log, 6)
    # still within the window: turned away
    [early] = await sender.send([event("a", "a-early")])
    [refused] = [v for v in await views(redis, fn("rated-keyed")) if early in v.event_ids]
    assert (refused.status, refused.reason) == ("skipped", 'rate limited: 2 runs per 2s (key "a")')
    # past it (2 s and a bucket, 20 ms): two places again
    await asyncio.sleep(max(0.0, 2.1 - (time.monotonic() - sent)))
    await sender.send([event("a", f"a-late{i}") for i in range(3)])
    late = [s.tag for s in await wait_starts(log, 8)]
    assert sorted(late[6:]) == ["a-late0", "a-late1"]
    skipped = [v for v in await views(redis, fn("rated-keyed")) if v.status == "skipped"]
    assert len(skipped) == 3 + 1 + 1


# -- idempotency ---------------------------------------------------------------------------------------


async def test_idempotency_starts_one_run_per_key_within_the_window_and_again_after_it(
    redis: Redis, start_workers: StartWorkers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPQ_IDEMPOTENCY_TTL_S", "2")  # read by the sender's limits
    start_workers("flow_starts")
    log = tmp_path / "idem.log"
    sender = stepq.Client("idem-sender", redis_url=REDIS_URL)
    try:

        def event(cart: str, tag: str) -> stepq.Event:
            return stepq.Event(name="flow/idem", data={"log": str(log), "tag": tag, "cart_id": cart})

        await sender.send([event("c1", "c1-first"), event("c1", "c1-second"), event("c2", "c2-first")])
        await sender.send([event("c1", "c1-third")])
        found = await views(redis, fn("idem"))
        [run_c1] = [s.run_id for s in await wait_starts(log, 2) if s.tag == "c1-first"]
        skipped = [v for v in found if v.status == "skipped"]
        assert sorted(v.reason or "" for v in skipped) == [f'idempotent duplicate of run {run_c1} (key "c1")'] * 2
        assert sorted(s.tag for s in starts(log)) == ["c1-first", "c2-first"]
        # a different key is not affected, and the window ends: 2 s after the run it started
        await asyncio.sleep(2.2)
        await sender.send([event("c1", "c1-after")])
        assert sorted(s.tag for s in await wait_starts(log, 3)) == ["c1-after", "c1-first", "c2-first"]
    finally:
        await sender.aclose()


# -- throttle ------------------------------------------------------------------------------------------


def gcra(created: list[int], limit: int, period_ms: int, burst: int) -> list[int]:
    """When each start (in creation order) may go, by GCRA with burst (the rule of the README)."""
    interval = period_ms / limit
    tat: float | None = None
    out = []
    for now in created:
        tat = now if tat is None or tat < now else tat
        out.append(max(now, int(-(-(tat - (burst - 1) * interval) // 1))))
        tat += interval
    return out


async def test_a_throttle_delays_starts_to_the_gcra_times_in_order_and_drops_nothing(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """limit 5 per 1 s, burst 1: one start every 200 ms."""
    start_workers("flow_starts")
    log = tmp_path / "throttled.log"
    await sender.send([stepq.Event(name="flow/throttled", data={"log": str(log), "tag": str(i)}) for i in range(10)])
    found = await views(redis, fn("throttled"))
    by_tag = {s.tag: s for s in await wait_starts(log, 10, timeout=30)}
    runs = {v.run_id: v for v in found}
    order = [runs[by_tag[str(i)].run_id] for i in range(10)]  # the runs in the order their events were sent
    due = gcra([v.created_ms for v in order], 5, 1000, 1)
    for i, (view, at) in enumerate(zip(order, due, strict=True)):
        started_ms = by_tag[str(i)].at * 1000
        assert started_ms >= at, f"start {i} at {started_ms:.0f}, before its GCRA time {at}"
        if at > view.created_ms:
            assert (view.held, view.held_until_ms) == ("throttled", at)
        else:
            assert view.held is None
    # FIFO: each run was given a later start than the one sent before it (which of two jobs due at
    # once a loaded worker runs first is not the throttle's to say, so the starts are not compared)
    given = [v.held_until_ms or v.created_ms for v in order]
    assert all(a < b for a, b in itertools.pairwise(given)), given
    assert due[-1] - due[0] >= 1800  # spread evenly: nine intervals of 200 ms
    await wait_for_runs(redis, list(runs), ("completed",))
    out = subprocess.run(
        [*STEPQ_CLI, "run", order[-1].run_id, "--redis-url", REDIS_URL], capture_output=True, text=True, check=True
    ).stdout
    assert "waited    throttled until " in out, out
    listed = subprocess.run(
        [*STEPQ_CLI, "runs", "--redis-url", REDIS_URL, "--function", "throttled"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listed.count("waited: throttled until ") == sum(
        1 for at, v in zip(due, order, strict=True) if at > v.created_ms
    )


async def test_a_throttle_burst_starts_that_many_at_once_per_key(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """limit 4 per 1 s, burst 3, per event.data.k: three start at once, then one per 250 ms; key b
    does not wait behind key a."""
    start_workers("flow_starts")
    log = tmp_path / "burst.log"
    events = [
        stepq.Event(name="flow/throttled-burst", data={"log": str(log), "tag": f"a{i}", "k": "a"}) for i in range(6)
    ]
    events += [
        stepq.Event(name="flow/throttled-burst", data={"log": str(log), "tag": f"b{i}", "k": "b"}) for i in range(2)
    ]
    await sender.send(events)
    by_tag = {s.tag: s for s in await wait_starts(log, 8, timeout=30)}
    runs = {v.run_id: v for v in await views(redis, fn("throttled-burst"))}
    for key, n in (("a", 6), ("b", 2)):
        order = [runs[by_tag[f"{key}{i}"].run_id] for i in range(n)]
        due = gcra([v.created_ms for v in order], 4, 1000, 3)
        for i, at in enumerate(due):
            assert by_tag[f"{key}{i}"].at * 1000 >= at
        if key == "a":
            assert [d - order[0].created_ms >= 250 for d in due] == [False, False, False, True, True, True]
            assert [v.held for v in order[3:]] == ['throttled (key "a")'] * 3
            # FIFO across the delayed starts
            given = [v.held_until_ms or 0 for v in order[3:]]
            assert given == due[3:] and given == sorted(given)
        else:
            assert [v.held for v in order] == [None, None]


# -- singleton -----------------------------------------------------------------------------------------


async def lock_holder(redis: Redis, name: str, shown_key: str) -> str | None:
    digest = key_of("event.data.acct", Bindings(event={"data": {"acct": json.loads(shown_key)}})).digest
    raw = await redis.get(keys.flow_start(0, "singleton", fn(name), digest))
    return raw.decode() if raw is not None else None


async def test_a_singleton_in_skip_mode_skips_starts_while_its_run_is_active_then_frees_the_key(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("flow_starts")
    log = tmp_path / "single.log"

    def event(acct: int, tag: str) -> stepq.Event:
        return stepq.Event(name="flow/single-skip", data={"log": str(log), "tag": tag, "acct": acct})

    await sender.send([event(1, "first")])
    [first] = await wait_starts(log, 1)
    await sender.send([event(1, "second"), event(2, "other")])
    await wait_starts(log, 2)
    found = await views(redis, fn("single-skip"))
    [skipped] = [v for v in found if v.status == "skipped"]
    assert skipped.reason == f"singleton: run {first.run_id} is active (key 1)"
    # the skip is announced: stepq/function.skipped starts the function listening for it
    [heard] = [s for s in await wait_starts(log, 3) if s.tag == "heard"]
    assert heard.run_id == f"{skipped.run_id}|{skipped.reason}"
    assert await lock_holder(redis, "single-skip", "1") == first.run_id
    # the active run ends: the key is free, and the next start runs
    await sender.send([stepq.Event(name="flow/release", data={"acct": 1})])
    assert (await wait_for_run(redis, first.run_id)).status == "completed"
    assert await lock_holder(redis, "single-skip", "1") is None
    await sender.send([event(1, "third")])
    assert sorted(s.tag for s in await wait_starts(log, 4)) == ["first", "heard", "other", "third"]
    out = subprocess.run(
        [*STEPQ_CLI, "run", skipped.run_id, "--redis-url", REDIS_URL], capture_output=True, text=True, check=True
    ).stdout
    assert f"skipped   singleton: run {first.run_id} is active (key 1)" in out, out


async def test_a_singleton_in_cancel_mode_cancels_the_active_run_for_the_new_one(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("flow_starts")
    log = tmp_path / "cancel.log"

    def event(tag: str) -> stepq.Event:
        return stepq.Event(name="flow/single-cancel", data={"log": str(log), "tag": tag, "acct": 7})

    await sender.send([event("old")])
    [old] = await wait_starts(log, 1)
    await sender.send([event("new")])
    cancelled = await wait_for_run(redis, old.run_id, ("cancelled",), timeout=5)
    [new] = [s for s in await wait_starts(log, 2) if s.tag == "new"]
    assert cancelled.reason == f"singleton: replaced by {new.run_id}"
    assert cancelled.error["message"] == f"singleton: replaced by {new.run_id}"
    assert await lock_holder(redis, "single-cancel", "7") == new.run_id
    await sender.send([stepq.Event(name="flow/release", data={"acct": 7})])
    assert (await wait_for_run(redis, new.run_id)).status == "completed"
    assert await lock_holder(redis, "single-cancel", "7") is None
    out = subprocess.run(
        [*STEPQ_CLI, "runs", "--redis-url", REDIS_URL, "--function", "single-cancel"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"singleton: replaced by {new.run_id}" in out, out


async def test_a_singletons_key_is_freed_when_its_run_ends_after_its_worker_was_killed(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    workers = start_workers("flow_starts", n=2, env={"STEPQ_STEP_TIMEOUT": "3600"})
    log = tmp_path / "slow.log"
    data = {"log": str(log), "first_s": 60}
    await sender.send([stepq.Event(name="flow/single-slow", data={**data, "tag": "slow"})])
    [first] = await wait_starts(log, 1)
    [victim] = [w for w in workers if w.pid == first.pid]
    victim.proc.kill()
    victim.proc.wait(timeout=10)
    # the run is still active (its step waits for its lease to run out): a new start is skipped
    [turned] = await sender.send([stepq.Event(name="flow/single-slow", data={**data, "tag": "during"})])
    [during] = [v for v in await views(redis, fn("single-slow")) if turned in v.event_ids]
    assert (during.status, during.reason) == ("skipped", f"singleton: run {first.run_id} is active")
    # another worker takes the step over once the lease expires, and the run ends: the key is free
    assert (await wait_for_run(redis, first.run_id, timeout=60)).status == "completed"
    [again] = [s for s in await wait_starts(log, 2) if s != first]
    assert again.run_id == first.run_id and again.pid != first.pid
    assert await redis.get(keys.flow_start(0, "singleton", fn("single-slow"), "")) is None
    await sender.send([stepq.Event(name="flow/single-slow", data={**data, "tag": "after"})])
    [after] = [s for s in await wait_starts(log, 3) if s.tag == "after"]
    assert (await wait_for_run(redis, after.run_id)).status == "completed"


# -- invoked runs, several senders, bad options --------------------------------------------------------


async def test_an_invoked_run_over_its_rate_limit_fails_the_invoke_step_with_the_reason(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("flow_starts")
    [first, second] = await sender.send([stepq.Event(name="flow/invoker", data={}) for _ in range(2)])
    parents = {v.event_ids[0]: v.run_id for v in await views(redis, fn("invoker"))}
    done_first = await wait_for_run(redis, parents[first])
    done_second = await wait_for_run(redis, parents[second])
    outputs = sorted([done_first.output, done_second.output], key=str)
    assert outputs[0] == "child ran"
    assert outputs[1] == {"error": "FunctionSkipped", "message": "rate limited: 1 runs per 1m"}
    children = by_status(await views(redis, fn("child-rated")))
    assert [len(children.get("completed", [])), len(children.get("skipped", []))] == [1, 1]


@pytest.mark.parametrize("shard_count", [1, 4])
async def test_start_limits_hold_exactly_under_concurrent_senders(
    redis: Redis, start_workers: StartWorkers, tmp_path: Path, shard_count: int
) -> None:
    """4 senders at once (their own connections), 30 events each: the rate limit lets exactly 10
    through, idempotency exactly one per cart, and throttle drops none of them."""
    await use_shards(redis, shard_count)  # 4: runs placed over shards (runtime/placement.py)
    start_workers("flow_starts")
    log = tmp_path / "load.log"
    senders = [stepq.Client(f"sender-{i}", redis_url=REDIS_URL) for i in range(4)]

    async def send(i: int, client: stepq.Client) -> None:
        for j in range(30):
            await client.send(
                [
                    stepq.Event(name="flow/rated", data={"log": str(log), "tag": f"r{i}-{j}"}),
                    stepq.Event(name="flow/idem", data={"log": str(log), "tag": f"i{i}-{j}", "cart_id": j % 5}),
                    *(
                        [stepq.Event(name="flow/throttled", data={"log": str(log), "tag": f"t{i}-{j}"})]
                        if j < 3
                        else []
                    ),
                ]
            )

    try:
        await asyncio.gather(*(send(i, c) for i, c in enumerate(senders)))
    finally:
        for client in senders:
            await client.aclose()
    rated = by_status(await runs_of(redis, fn("rated"), limit=200))
    assert len(rated.pop("skipped")) == 110 and sum(map(len, rated.values())) == 10
    idem = by_status(await runs_of(redis, fn("idem"), limit=200))
    assert len(idem.pop("skipped")) == 115 and sum(map(len, idem.values())) == 5
    throttled = await runs_of(redis, fn("throttled"), limit=200)
    assert len(throttled) == 12 and not any(v.status == "skipped" for v in throttled)
    await wait_for_runs(redis, [v.run_id for v in throttled], ("completed",), timeout=30)
    assert len(await wait_starts(log, 10 + 5 + 12)) == 27


def test_bad_start_limits_are_still_refused_naming_the_field() -> None:
    client = stepq.Inngest(app_id="t-bad-flow")

    def create(**options: object) -> None:
        client.create_function(fn_id="f", trigger=stepq.TriggerEvent(event="e"), **options)  # type: ignore[arg-type]

    with pytest.raises(FunctionConfigError, match=r"rate_limit.period: must be from 1s to 1d"):
        create(rate_limit=stepq.RateLimit(limit=1, period=2 * 86400 * 1000))
    with pytest.raises(FunctionConfigError, match=r"throttle.limit: an integer from 1"):
        create(throttle=stepq.Throttle(limit=0, period=1000))
    with pytest.raises(FunctionConfigError, match=r"singleton.mode: one of skip, cancel"):
        create(singleton=stepq.Singleton(mode="drop"))  # type: ignore[arg-type]
    with pytest.raises(FunctionConfigError, match=r"idempotency: expression"):
        create(idempotency="event.data.(")
    with pytest.raises(FunctionConfigError, match=r"idempotency: cannot be combined with rate_limit"):
        create(idempotency="event.data.id", rate_limit=stepq.RateLimit(limit=1, period=1000))
    # valid ones are accepted now
    create(throttle=stepq.Throttle(limit=1, period=1000), singleton=stepq.Singleton(mode="skip"))


# -- served functions (the official inngest SDK) ------------------------------------------------------

SERVED_APP = "tests.apps.official_flow_app:app"


def served(name: str) -> str:
    return f"compat-flow-{name}"


@pytest.fixture(scope="class")
def served_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``stepq api --dev``, ``stepq worker --http`` and the official-SDK app, synced. The API is
    the sender (events are posted to it), so it reads the idempotency window."""
    with dev_stack(
        tmp_path_factory.mktemp("flow-served"), SERVED_APP, api_env={"STEPQ_IDEMPOTENCY_TTL_S": "2"}
    ) as stack:
        yield stack


class TestServedFunctions:
    async def test_the_limits_the_sdk_registered_are_kept(self, served_stack: Stack, db: Redis) -> None:
        records = {r.slug: r for r in await Registry(db).functions()}
        assert records[served("throttled")].flow.throttle == ThrottleSpec(limit=5, period_ms=1000, burst=1)
        assert records[served("rated")].flow.rate_limit == RateLimitSpec(
            limit=3, period_ms=60_000, key="event.data.user"
        )
        assert records[served("single")].flow.singleton == SingletonSpec(mode="cancel", key="event.data.acct")
        assert records[served("idem")].flow.idempotency == "event.data.cart_id"

    async def test_a_served_throttle_delays_starts_to_the_gcra_times_in_order(
        self, served_stack: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "throttled.log"
        await post_events(
            served_stack.api_url,
            [{"name": "compat-flow/throttled", "data": {"log": str(log), "tag": str(i)}} for i in range(8)],
        )
        by_tag = {s.tag: s for s in await wait_starts(log, 8, timeout=60)}
        runs = {v.run_id: v for v in await runs_of(db, served("throttled"))}
        order = [runs[by_tag[str(i)].run_id] for i in range(8)]
        due = gcra([v.created_ms for v in order], 5, 1000, 1)
        for i, at in enumerate(due):
            assert by_tag[str(i)].at * 1000 >= at, f"start {i} before its GCRA time"
        given = [v.held_until_ms or v.created_ms for v in order]
        assert all(a < b for a, b in itertools.pairwise(given)), given  # FIFO
        assert [v.held for v in order[1:]] == ["throttled"] * 7
        await wait_for_runs(db, list(runs), ("completed",), timeout=60)

    async def test_a_served_rate_limit_skips_events_over_it_per_key(
        self, served_stack: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "rated.log"
        events: list[dict[str, object]] = [
            {"name": "compat-flow/rated", "data": {"log": str(log), "tag": f"{u}{i}", "user": u}}
            for u in ("x", "y")
            for i in range(5)
        ]
        ids = await post_events(served_stack.api_url, events)
        found = await runs_of(db, served("rated"))
        skipped = sorted((v.event_ids[0], v.reason) for v in found if v.status == "skipped")
        assert skipped == sorted(
            [(ids[i], 'rate limited: 3 runs per 1m (key "x")') for i in (3, 4)]
            + [(ids[i], 'rate limited: 3 runs per 1m (key "y")') for i in (8, 9)]
        )
        assert sorted(s.tag for s in await wait_starts(log, 6, timeout=60)) == ["x0", "x1", "x2", "y0", "y1", "y2"]
        # the HTTP API shows a skipped run and why
        [one] = [v for v in found if v.status == "skipped"][:1]
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(f"{served_stack.api_url}/v0/runs/{one.run_id}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "skipped"
        assert response.json()["reason"] == one.reason

    async def test_a_served_singleton_cancels_the_active_run_and_idempotency_skips_duplicates(
        self, served_stack: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "single.log"
        await post_events(
            served_stack.api_url, [{"name": "compat-flow/single", "data": {"log": str(log), "tag": "old", "acct": 1}}]
        )
        [old] = await wait_starts(log, 1, timeout=60)
        await post_events(
            served_stack.api_url, [{"name": "compat-flow/single", "data": {"log": str(log), "tag": "new", "acct": 1}}]
        )
        cancelled = await wait_for_run(db, old.run_id, ("cancelled",), timeout=10)
        [new] = [s for s in await wait_starts(log, 2, timeout=60) if s.tag == "new"]
        assert cancelled.reason == f"singleton: replaced by {new.run_id}"
        await post_events(served_stack.api_url, [{"name": "compat-flow/release", "data": {"acct": 1}}])
        assert (await wait_for_run(db, new.run_id, timeout=60)).status == "completed"

        idem_log = tmp_path / "idem.log"
        cart: dict[str, object] = {"name": "compat-flow/idem", "data": {"log": str(idem_log), "cart_id": "k1"}}
        await post_events(served_stack.api_url, [cart, cart])
        [first] = await wait_starts(idem_log, 1, timeout=60)
        [dup] = [v for v in await runs_of(db, served("idem")) if v.status == "skipped"]
        assert dup.reason == f'idempotent duplicate of run {first.run_id} (key "k1")'
        await asyncio.sleep(2.2)  # the API's window (STEPQ_IDEMPOTENCY_TTL_S=2) is over
        await post_events(served_stack.api_url, [cart])
        assert len(await wait_starts(idem_log, 2, timeout=60)) == 2


# -- cron ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_count", [1, 4])
async def test_cron_runs_are_held_to_their_functions_start_limits(redis: Redis, shard_count: int) -> None:
    """A cron tick's run is one of the function's runs: a singleton skips a tick while the last
    tick's run is still active (no worker runs it here), and says so; on several shards too (the
    ticks' runs meet in the function's shard, runtime/placement.py)."""
    await use_shards(redis, shard_count)
    slug, app_id = "t-cron-flow-nightly", "t-cron-flow"
    config = {
        "id": slug,
        "app_id": app_id,
        "triggers": [{"cron": "* * * * *"}],
        "flow": {"singleton": {"mode": "skip"}},
    }
    await Registry(redis).register_app(app_id, [config])
    scheduler = CronScheduler(RunStore(redis), [(slug, app_id, "* * * * *")])
    tick = dt.datetime(2026, 11, 30, 6, 0, tzinfo=dt.UTC)
    [first] = await scheduler.fire_due(tick)
    assert await scheduler.fire_due(tick + dt.timedelta(minutes=1)) == []
    found = {v.run_id: v for v in await runs_of(redis, slug)}
    [skipped] = [v for v in found.values() if v.status == "skipped"]
    assert found[first].status == "queued"
    assert skipped.reason == f"singleton: run {first} is active"


# -- the Lua rules alone, on a synthetic clock ------------------------------------------------------


async def _drive(redis: Redis, driver: str, script_keys: list[str], *args: int) -> list[int]:
    """Run ``driver`` after create_run's prelude and libraries (the functions create_run calls)."""
    text = prelude() + libraries("create_run") + "\n" + driver
    reply = await redis.eval(text, len(script_keys), *script_keys, *(str(a) for a in args))  # type: ignore[misc]
    return [int(x) for x in reply]


RATE_DRIVER = """
local c = {kind = 'rate', key = KEYS[1], total = KEYS[2], limit = tonumber(ARGV[1]), period = tonumber(ARGV[2]),
  width = tonumber(ARGV[3]), per = ARGV[2] .. 'ms', shown = ''}
local out = {}
for i = 4, #ARGV do
  local now = tonumber(ARGV[i])
  if start_refusal({c}, now) then out[#out + 1] = 0 else rate_charge(c, now) out[#out + 1] = 1 end
end
return out
"""


@pytest.mark.parametrize("seed", range(6))
async def test_the_rate_limit_never_admits_more_than_limit_in_any_window_and_refuses_only_when_full(
    redis: Redis, seed: int
) -> None:
    """Random arrivals (bursts and gaps) on a synthetic clock: every window of ``period`` holds at
    most ``limit`` admitted starts, and an arrival is refused only when the window, widened by one
    bucket (the documented lateness), already holds ``limit``."""
    rng = random.Random(seed)
    limit, period = rng.choice([(1, 1000), (3, 2000), (10, 60_000), (50, 5000)])
    width = max(1, period // 100)
    now, arrivals = 10**9, []
    for _ in range(400):
        now += rng.choice([0, 0, 1, rng.randrange(period // 50 + 1), rng.randrange(period + 1)])
        arrivals.append(now)
    rate_keys = [keys.flow_start(0, "rate", "f", str(seed)), keys.flow_start(0, "rate_n", "f", str(seed))]
    admitted = await _drive(redis, RATE_DRIVER, rate_keys, limit, period, width, *arrivals)
    starts_at = [t for t, ok in zip(arrivals, admitted, strict=True) if ok]
    for t in starts_at:  # the windows that end at a start are the fullest
        assert sum(1 for s in starts_at if t - period < s <= t) <= limit
    for t, ok in zip(arrivals, admitted, strict=True):
        if not ok:
            assert sum(1 for s in starts_at if t - period - width < s <= t) >= limit
    assert any(admitted) and not all(admitted)


THROTTLE_DRIVER = """
local c = {kind = 'throttle', key = KEYS[1], limit = tonumber(ARGV[1]), period = tonumber(ARGV[2]),
  burst = tonumber(ARGV[3]), shown = ''}
local out = {}
for i = 4, #ARGV do
  local due = start_flow({c}, 'run' .. i, tonumber(ARGV[i]), nil)
  out[#out + 1] = due
end
return out
"""


@pytest.mark.parametrize("seed", range(4))
async def test_the_throttle_gives_each_start_its_gcra_time(redis: Redis, seed: int) -> None:
    rng = random.Random(seed)
    limit, period, burst = rng.choice([(2, 2000, 1), (5, 1000, 1), (4, 1000, 3), (3, 7000, 2)])
    now, arrivals = 10**9, []
    for _ in range(200):
        now += rng.choice([0, 0, rng.randrange(period // limit + 1), rng.randrange(3 * period)])
        arrivals.append(now)
    due = await _drive(
        redis, THROTTLE_DRIVER, [keys.flow_start(0, "throttle", "f", str(seed))], limit, period, burst, *arrivals
    )
    assert due == gcra(arrivals, limit, period, burst)
    assert due == sorted(due)  # FIFO
    # nothing drops: every start has a time, and no more than ``burst`` share a time
    assert max(due.count(d) for d in due) <= burst
