"""Flow control stays exact when runs are spread over several shards (runtime/placement.py).

Each test runs on one Redis holding 4 shards (``tests.helpers.use_shards``: the sharded code paths
on one server) and on a Redis Cluster of 3 masters (all 32 shards; tests/cluster.py): every run is
created in its shard, every flow-control key carries its run's shard tag. Concurrent senders (their
own connections) send to functions of every placement rule (tests/apps/placed.py); the counts must
come out as on one shard, keyed functions must spread over shards and function-wide ones stay on
one. Control runs with placement made random show the same checks fail when runs sharing a limit
land on different shards.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import stepq
from stepq.expressions import Bindings
from stepq.flow_spec import ConcurrencyLimit, FlowControl
from stepq.runtime import placement, shards
from stepq.runtime.actions import Actions, RunConflict
from stepq.runtime.connection import close, open_redis
from stepq.runtime.event_queries import get_event
from stepq.runtime.function_summaries import function_summaries
from stepq.runtime.queries import RunView
from stepq.runtime.registry import Registry
from stepq.runtime.shards import shard_of
from tests.apps import placed
from tests.helpers import REDIS_URL, WorkerOn, WorkerProcess, runs_of, use_shards, wait_for_runs
from tests.test_concurrency import overlap, spans

SENDERS = 4


@dataclasses.dataclass
class Deployment:
    """Where the test runs: its client, the URL processes open, how many shards they use."""

    redis: Any
    url: str
    shards: int
    directory: Path
    workers: list[WorkerProcess] = dataclasses.field(default_factory=list)

    def start_workers(self, n: int) -> None:
        """``n`` worker processes serving tests/apps/placed.py, ready when this returns."""
        for _ in range(n):
            directory = self.directory / f"worker-{len(self.workers)}"
            directory.mkdir()
            self.workers.append(WorkerOn("placed", directory, self.url))
        for worker in self.workers:
            worker.wait_ready()


@pytest.fixture(params=["one Redis, 4 shards", "3-master cluster"])
async def deployment(request: pytest.FixtureRequest, redis: Redis, tmp_path: Path) -> AsyncIterator[Deployment]:
    """One Redis holding 4 shards (``tests.helpers.use_shards``: this process and the workers use
    them), or the session's Redis Cluster of 3 masters (all 32 shards)."""
    if request.param == "one Redis, 4 shards":
        await use_shards(redis, 4)
        where = Deployment(redis, REDIS_URL, 4, tmp_path)
    else:
        cluster = request.getfixturevalue("cluster")
        where = Deployment(await open_redis(cluster.url), cluster.url, shards.SHARD_LIMIT, tmp_path)
    await Registry(where.redis).register_app(
        placed.client.app_id, [fn.config() for fn in placed.client.functions.values()]
    )
    try:
        yield where
    finally:
        for worker in where.workers:
            worker.stop()
        if where.redis is not redis:
            await close(where.redis)


async def send_concurrently(url: str, batches: list[list[stepq.Event]]) -> None:
    """Each batch from its own client (own connections), all at once, one event at a time."""
    clients = [stepq.Client(f"sender-{i}", redis_url=url) for i in range(len(batches))]

    async def send(client: stepq.Client, batch: list[stepq.Event]) -> None:
        for event in batch:
            await client.send(event)

    try:
        await asyncio.gather(*(send(c, b) for c, b in zip(clients, batches, strict=True)))
    finally:
        for client in clients:
            await client.aclose()


def event(fn_id: str, **data: object) -> stepq.Event:
    return stepq.Event(name=f"placed/{fn_id}", data=data)


def admitted(found: list[RunView]) -> list[RunView]:
    return [v for v in found if v.status != "skipped"]


def shards_of(found: list[RunView]) -> set[int]:
    return {shard_of(v.run_id) for v in found}


def user_of(view: RunView, users: dict[str, str]) -> str:
    return users[view.event_ids[0]]


async def start_limit_load(url: str) -> None:
    """4 senders x 30 rounds: whole-function and keyed rate limits, idempotency, singleton,
    whole-function and keyed throttles, and a function without flow control."""
    batches = []
    for i in range(SENDERS):
        batch = []
        for j in range(30):
            user = f"u{j % 5}"
            batch += [
                event("whole-rate", n=f"{i}-{j}"),
                event("keyed-rate", user=user),
                event("idem", user=user),
                event("single", user=user),
                event("plain", n=f"{i}-{j}"),
            ]
            if j < 3:
                batch.append(event("throttled", n=f"{i}-{j}"))
            if j < 6:
                batch.append(event("keyed-throttle", user=f"u{j % 3}"))
        batches.append(batch)
    await send_concurrently(url, batches)


async def users_by_event(redis: Any, found: list[RunView]) -> dict[str, str]:
    """The ``user`` of each run's first event (read from the event log)."""
    out = {}
    for view in found:
        stored = await get_event(redis, view.event_ids[0])
        assert stored is not None
        out[view.event_ids[0]] = str(stored.data["user"])
    return out


def throttle_times(found: list[RunView]) -> list[int]:
    """When each throttled run may start (its held time, or its creation when it was not held)."""
    return sorted(v.held_until_ms or v.created_ms for v in found)


async def test_start_limits_stay_exact_over_shards_under_concurrent_senders(deployment: Deployment) -> None:
    redis = deployment.redis
    await start_limit_load(deployment.url)

    # a function-wide rate limit: exactly 10 of 120, all of its runs on one shard
    whole = await runs_of(redis, "whole-rate")
    assert len(whole) == 120 and len(admitted(whole)) == 10
    assert len(shards_of(whole)) == 1

    # keyed: exactly 3 per user, each user's runs on one shard, the users over several shards
    keyed = await runs_of(redis, "keyed-rate")
    users = await users_by_event(redis, keyed)
    assert Counter(user_of(v, users) for v in admitted(keyed)) == {f"u{k}": 3 for k in range(5)}
    per_user = defaultdict(set)
    for view in keyed:
        per_user[user_of(view, users)].add(shard_of(view.run_id))
    assert all(len(s) == 1 for s in per_user.values()) and len(set().union(*per_user.values())) > 1

    # idempotency and singleton (no worker: the first run of each user stays active): one per user
    for fn_id in ("idem", "single"):
        found = await runs_of(redis, fn_id)
        assert len(found) == 120
        users = await users_by_event(redis, found)
        assert Counter(user_of(v, users) for v in admitted(found)) == {f"u{k}": 1 for k in range(5)}, fn_id
        assert len(shards_of(found)) > 1, fn_id

    # throttles drop nothing and give each start its own GCRA time: 5/s (every 200 ms) for the
    # function, 2/s per user; a throttle split over shards would start one run per shard at once
    throttled = await runs_of(redis, "throttled")
    assert len(throttled) == 12 and all(v.status == "queued" for v in throttled)
    assert all(b - a >= 200 for a, b in itertools.pairwise(throttle_times(throttled)))
    keyed_throttle = await runs_of(redis, "keyed-throttle")
    users = await users_by_event(redis, keyed_throttle)
    assert len(keyed_throttle) == 24
    for k in range(3):
        mine = [v for v in keyed_throttle if user_of(v, users) == f"u{k}"]
        assert len(mine) == 8 and all(b - a >= 500 for a, b in itertools.pairwise(throttle_times(mine)))

    # no flow control: spread over every shard
    assert len(shards_of(await runs_of(redis, "plain"))) >= 4
    # the functions page says where each function's runs go
    shown = {s.slug.removeprefix("t-placed-"): s.placement for s in await function_summaries(redis)}
    assert shown["plain"] == ""
    assert shown["whole-rate"] == "runs: one shard for all its runs (rate limit without a key)"
    assert shown["keyed-throttle"] == "runs: one shard per value of event.data.user (throttle)"
    assert shown["shared-a"] == "runs: the shared shard (concurrency of scope env, shared with other functions)"


async def test_the_same_load_placed_at_random_breaks_the_limits(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: with every run placed at random (as before placement), each shard keeps its
    own counts, and the checks above fail. So they can."""
    monkeypatch.setattr(placement, "rule_of", lambda flow: placement.Placement(placement.Rule.SPREAD))
    redis = deployment.redis
    await start_limit_load(deployment.url)
    whole = await runs_of(redis, "whole-rate")
    assert len(admitted(whole)) > 10 and len(shards_of(whole)) > 1
    idem = await runs_of(redis, "idem")
    assert len(admitted(idem)) > 5
    throttled = await runs_of(redis, "throttled")
    assert any(b - a < 200 for a, b in itertools.pairwise(throttle_times(throttled)))


async def test_debounce_and_batches_gather_into_one_run_per_key_over_shards(deployment: Deployment) -> None:
    """8 users, 4 senders each sending 10 events per user: one debounced run and one batch per
    user (neither fires within the test: 60 s period and timeout), holding all its user's events."""
    redis = deployment.redis
    batches = [
        [
            event(fn_id, user=f"u{u}", n=f"{i}-{j}")
            for j in range(10)
            for u in range(8)
            for fn_id in ("debounced", "batched")
        ]
        for i in range(SENDERS)
    ]
    await send_concurrently(deployment.url, batches)
    for fn_id in ("debounced", "batched"):
        found = await runs_of(redis, fn_id)
        assert len(found) == 8, (fn_id, [(v.run_id, v.gathered) for v in found])
        assert all(v.gathered is not None and v.gathered["events"] == SENDERS * 10 for v in found), fn_id
        keys = {v.gathered["key"] for v in found if v.gathered is not None}
        assert keys == {f'"u{u}"' for u in range(8)}, keys
        assert len(shards_of(found)) > 1, fn_id


async def test_event_id_dedupe_meets_in_one_shard_whatever_the_rule(deployment: Deployment) -> None:
    """4 senders resend the same 10 events (ids set) at once: one run per event and function, for
    a spread function, a keyed one and a function-wide one."""
    redis = deployment.redis
    events = [
        stepq.Event(name=f"placed/{fn_id}", data={"user": f"u{n % 3}", "n": n}, id=f"{fn_id}-{n}")
        for n in range(10)
        for fn_id in ("plain", "keyed-throttle", "throttled")
    ]
    await send_concurrently(deployment.url, [events] * SENDERS)
    for fn_id in ("plain", "keyed-throttle", "throttled"):
        found = await runs_of(redis, fn_id)
        assert len(found) == 10, fn_id
    assert len(shards_of(await runs_of(redis, "plain"))) > 1
    assert len(shards_of(await runs_of(redis, "throttled"))) == 1


async def test_a_replay_stays_in_its_runs_shard_and_is_refused_once_flow_control_places_it_elsewhere(
    deployment: Deployment,
) -> None:
    """A replay is made in the old run's shard (fork_run.lua copies state in one script): right
    while the function's flow control still places its runs there; refused, saying why, once a
    changed flow control places them in another shard (its concurrency would be counted apart)."""
    redis = deployment.redis
    actions = Actions.on(redis)
    sent = [event("keyed-limited", user=f"u{k}") for k in range(12)]
    await send_concurrently(deployment.url, [sent])
    found = await runs_of(redis, "keyed-limited")
    for view in found:
        await actions.cancel(view.run_id)
    moved_away = None
    for view in found:
        started = await actions.replay(view.run_id)
        assert shard_of(started.run_id) == shard_of(view.run_id)
    # the function now has a function-wide limit: all its runs go to its own shard
    configs = [copy.deepcopy(fn.config()) for fn in placed.client.functions.values()]  # not the app's own
    for config in configs:
        if config["id"].endswith("keyed-limited"):
            config["flow"]["concurrency"] = {"fn": [], "step": [{"limit": 2, "scope": "fn"}]}
    await Registry(redis).register_app(placed.client.app_id, configs)
    home = shard_of(
        placement.new_run_id("t-placed-keyed-limited", FlowControl(concurrency=(ConcurrencyLimit(2),)), Bindings())
    )
    for view in found:
        if shard_of(view.run_id) == home:
            assert shard_of((await actions.replay(view.run_id)).run_id) == home
        else:
            moved_away = view
            with pytest.raises(RunConflict, match=r"flow control .* changed since it ran"):
                await actions.replay(view.run_id)
    assert moved_away is not None  # 12 users over 4 shards: some were not in the function's shard


# -- with worker processes -------------------------------------------------------------------------


@pytest.mark.parametrize("placed_by", ["flow control", "random"])
async def test_concurrency_limits_hold_over_shards_with_2_workers(
    deployment: Deployment,
    tmp_path: Path,
    placed_by: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 senders, 2 workers serving every shard: a function-wide limit of 3 with 1 per user, a
    function limited only per user (step- and run-level, and a keyed throttle), and an env-scoped
    limit shared by two functions. Every limit holds at every instant and is reached; the keyed
    function's runs spread over shards, the function-wide one's stay on one. The control: runs
    placed at random (this process creates them) overrun the limits, each shard counting apart."""
    if placed_by == "random":
        monkeypatch.setattr(placement, "rule_of", lambda flow: placement.Placement(placement.Rule.SPREAD))
    redis = deployment.redis
    deployment.start_workers(2)
    log = tmp_path / "spans.log"
    batches = [
        [event("limited", log=str(log), user=f"c{(i * 10 + j) % 5}") for j in range(10)]
        + [event("keyed-limited", log=str(log), user=f"k{(i * 10 + j) % 8}") for j in range(10)]
        + [event("shared-a" if j % 2 else "shared-b", log=str(log), user=f"s{j % 2}") for j in range(5)]
        for i in range(SENDERS)
    ]
    await send_concurrently(deployment.url, batches)
    every = [v for fn_id in ("limited", "keyed-limited", "shared-a", "shared-b") for v in await runs_of(redis, fn_id)]
    assert len(every) == SENDERS * 25
    await wait_for_runs(redis, [v.run_id for v in every], ("completed",), timeout=180)
    found = spans(log)
    assert len(found) == SENDERS * 25
    most = overlap(found)
    per_key = overlap(found, group="key")
    shared = overlap([("shared", *s[1:]) for s in found if s[0].startswith("shared")], group="key")
    if placed_by == "random":
        assert most["limited"] > 3 or max(per_key.values()) > 1 or max(shared.values()) > 1, (most, per_key, shared)
        return
    assert most["limited"] == 3
    assert {k: n for k, n in per_key.items() if k.startswith("limited/")} == {f"limited/c{c}": 1 for c in range(5)}
    assert {k: n for k, n in per_key.items() if k.startswith("keyed-limited/")} == {
        f"keyed-limited/k{k}": 1 for k in range(8)
    }
    assert most["keyed-limited"] > 1  # different users' runs at once, on several shards
    assert shared == {"shared/s0": 1, "shared/s1": 1}  # counted across both functions
    assert len(shards_of(await runs_of(redis, "limited"))) == 1
    assert len(shards_of(await runs_of(redis, "keyed-limited"))) > 1
    assert len(shards_of(await runs_of(redis, "shared-a")) | shards_of(await runs_of(redis, "shared-b"))) == 1
