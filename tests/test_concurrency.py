"""Concurrency limits, under load and faults, with real workers.

Every step of tests/apps/flow_limits.py logs its start and end on the machine's monotonic clock;
``overlap`` replays the log and gives the most steps that executed at once, per group. The limits
must hold at every instant, across worker processes, while the workers have room for more.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from tests.helpers import REDIS_URL, STEPQ_CLI, StartWorkers, runs_of, start_runs, use_shards, wait_for_runs
from tests.http_fixtures import dev_stack, start_http_worker

Span = tuple[str, str, str, int, int]  # function, key, run id, start ns, end ns


def spans(log: Path) -> list[Span]:
    """Each finished step's span; a step whose worker died has a start and no end (left out)."""
    open_: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    out: list[Span] = []
    for line in log.read_text().splitlines():
        function, key, run_id, what, at, _ = line.split()
        if what == "start":
            open_[run_id].append((function, key, int(at)))
        else:
            function, key, started = open_[run_id].pop()
            out.append((function, key, run_id, started, int(at)))
    return out


def overlap(found: list[Span], group: str = "function") -> dict[str, int]:
    """The most spans open at once, per function (``group="function"``) or per function and key."""
    events: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for function, key, _, start, end in found:
        name = function if group == "function" else f"{function}/{key}"
        events[name] += [(start, 1), (end, -1)]
    most: dict[str, int] = {}
    for name, points in events.items():
        current = best = 0
        for _, delta in sorted(points):  # at one instant an end (-1) sorts before a start
            current += delta
            best = max(best, current)
        most[name] = best
    return most


def events(name: str, log: Path, items: list[dict[str, object]]) -> list[stepq.Event]:
    return [stepq.Event(name=name, data={"log": str(log), **item}) for item in items]


async def send_concurrently(
    sender: stepq.Client, redis: Redis, function: str, batches: list[list[stepq.Event]]
) -> list[str]:
    """Send the batches from concurrent tasks (as several app processes would); the runs' ids."""
    started = await asyncio.gather(*(start_runs(sender, redis, function, batch) for batch in batches))
    return [run_id for ids in started for run_id in ids]


@pytest.mark.parametrize("shard_count", [1, 4])
async def test_limits_hold_at_every_instant_across_workers_with_room_to_spare(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, shard_count: int
) -> None:
    """3 at once for the function, 1 per customer: 40 runs of 3 steps from 4 senders, 2 workers
    with room for 20 jobs at once. The limits hold at every instant, and are reached (the test
    would notice a limit that serialized everything, or one that let more through)."""
    await use_shards(redis, shard_count)  # 4: runs placed over shards (runtime/placement.py)
    start_workers("flow_limits", n=2)
    log = tmp_path / "spans.log"
    customers = ["a", "b", "c", "d", "e"]
    batches = [
        events("test/limited", log, [{"customer": customers[(i * 4 + t) % 5], "ms": 20} for i in range(10)])
        for t in range(4)
    ]
    run_ids = await send_concurrently(sender, redis, "limited", batches)
    await wait_for_runs(redis, run_ids, timeout=120)
    assert {view.status for view in await runs_of(redis, "limited")} == {"completed"}
    found = spans(log)
    assert len(found) == 40 * 3
    assert overlap(found) == {"limited": 3}
    per_customer = overlap(found, group="key")
    assert per_customer == {f"limited/{c}": 1 for c in customers}


async def test_a_sleeping_run_holds_no_slot(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """Limit 1 counts executing steps (Inngest's meaning): while one run sleeps, another's steps
    run, so two runs of a 1 s sleep each finish well within twice... the second run's first step
    starts before the first run's last step."""
    start_workers("flow_limits")
    log = tmp_path / "spans.log"
    run_ids = await start_runs(sender, redis, "sleeper", events("test/sleeper", log, [{}, {}]))
    await wait_for_runs(redis, run_ids, timeout=30)
    found = sorted(spans(log), key=lambda s: s[3])
    assert overlap(found) == {"sleeper": 1}
    first_run_last_step = max(s[4] for s in found if s[2] == found[0][2])
    second_run_first_step = min(s[3] for s in found if s[2] != found[0][2])
    assert second_run_first_step < first_run_last_step


async def test_one_key_with_100_times_the_work_does_not_starve_the_others(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """Function limit 2, 2 per customer: customer "big" queues 100 runs before "small" sends 5.
    Fair admission (the lane served least goes first) gives "small" about half the slots while it
    has work: its 5 runs finish long before "big"'s backlog drains."""
    start_workers("flow_limits")
    log = tmp_path / "spans.log"
    big = await start_runs(sender, redis, "fair", events("test/fair", log, [{"customer": "big"}] * 100))
    await asyncio.sleep(0.3)  # big's backlog forms
    small = await start_runs(sender, redis, "fair", events("test/fair", log, [{"customer": "small"}] * 5))
    await wait_for_runs(redis, big + small, timeout=120)
    order = [s[1] for s in sorted(spans(log), key=lambda s: s[4])]
    last_small = max(i for i, key in enumerate(order) if key == "small")
    # FIFO would finish small last (index 104); a fair share finishes it within ~2x its own work
    # after it arrived (the arrival at about index 10-20 of big's)
    assert last_small < 50, order
    assert overlap(spans(log)) == {"fair": 2}


@pytest.mark.parametrize("shard_count", [1, 4])
async def test_a_key_shared_across_functions_counts_both(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, shard_count: int
) -> None:
    """An env-scoped key is shared by every function naming it: 1 at once per customer across both."""
    await use_shards(redis, shard_count)  # 4: runs placed over shards (runtime/placement.py)
    start_workers("flow_limits", n=2)
    log = tmp_path / "spans.log"
    a = events("test/shared-a", log, [{"customer": c} for c in "xy" * 8])
    b = events("test/shared-b", log, [{"customer": c} for c in "xy" * 8])
    ids = await asyncio.gather(start_runs(sender, redis, "shared-a", a), start_runs(sender, redis, "shared-b", b))
    await wait_for_runs(redis, ids[0] + ids[1], timeout=60)
    assert overlap(spans(log), group="key") == {"shared/x": 1, "shared/y": 1}


async def test_a_run_level_limit_holds_through_sleeps(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """RunConcurrency(limit=1) per customer: a customer's runs never overlap as wholes (a run holds
    its slot through its sleep), while another customer's run goes on meanwhile."""
    start_workers("flow_limits")
    log = tmp_path / "spans.log"
    run_ids = await start_runs(
        sender, redis, "per-run", events("test/per-run", log, [{"customer": c} for c in "ppppq"])
    )
    await wait_for_runs(redis, run_ids, timeout=60)
    found = spans(log)
    whole: dict[str, list[int]] = {}
    for _, key, run_id, start, end in found:
        if key == "p":
            first, last = whole.get(run_id, [start, end])
            whole[run_id] = [min(first, start), max(last, end)]
    windows = sorted(whole.values())
    assert len(windows) == 4
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(windows))
    q_steps = [s for s in found if s[1] == "q"]
    assert any(windows[0][0] < s[3] < windows[-1][1] for s in q_steps)


async def test_priority_orders_the_waiting_runs(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """Limit 1, one run holding it: runs sent with priorities 0, 0, 60, 0, 120 go 120, 60, then the
    others in order of arrival."""
    start_workers("flow_limits")
    log = tmp_path / "spans.log"
    # the first run holds the one slot for 1 s: long enough for the others to arrive, however loaded
    # the machine, so that their order is priority's, not arrival's
    first = await start_runs(
        sender, redis, "prio", events("test/prio", log, [{"prio": 0, "customer": "first", "seconds": 1.0}])
    )
    await asyncio.sleep(0.02)
    rest = []
    for i, factor in enumerate([0, 0, 60, 0, 120]):
        rest += await start_runs(
            sender, redis, "prio", events("test/prio", log, [{"prio": factor, "customer": f"r{i}"}])
        )
    await wait_for_runs(redis, first + rest, timeout=30)
    order = [s[1] for s in sorted(spans(log), key=lambda s: s[3])]
    assert order[1:3] == ["r4", "r2"], order
    assert order[3:] == ["r0", "r1", "r3"], order


async def test_a_killed_worker_loses_its_slot_within_the_lease_and_nothing_is_stuck(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """SIGKILL the worker running the one slot's step: within the lease (2 s here) the step runs
    again elsewhere, every run completes, and no step overlapped another (the killed one's span
    has no end and is left out); the key's slots are empty at the end."""
    env = {"STEPQ_LEASE": "2"}
    start_workers("flow_limits", n=2, env=env)
    log = tmp_path / "spans.log"
    run_ids = await start_runs(sender, redis, "slow", events("test/slow", log, [{"seconds": 1.5}] * 4))
    while not log.exists() or "start" not in log.read_text():
        await asyncio.sleep(0.02)
    os.kill(int(log.read_text().split()[5]), signal.SIGKILL)  # the worker running the step
    await wait_for_runs(redis, run_ids, timeout=60)
    assert overlap(spans(log)) == {"slow": 1}
    assert len(spans(log)) == 4
    # no slot held, no lane left waiting (Redis drops an emptied zset)
    for pattern in (keys.slots(0, "*"), keys.slot_waiters(0, "*"), keys.lane(0, "*")):
        assert [k async for k in redis.scan_iter(match=pattern)] == []


async def test_a_slow_step_keeps_its_slot_by_heartbeat_and_a_paused_worker_loses_it(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """Limit 1 with a 2 s lease: a 3.5 s step renews its lease and keeps the slot: the other run
    waits (no overlap). Then SIGSTOP the worker running the next step: its lease lapses, the
    step runs again on the other worker, and the runs complete after SIGCONT."""
    env = {"STEPQ_LEASE": "2"}
    start_workers("flow_limits", n=2, env=env)
    log = tmp_path / "spans.log"
    run_ids = await start_runs(sender, redis, "slow", events("test/slow", log, [{"seconds": 3.5}, {"seconds": 3.5}]))
    await wait_for_runs(redis, run_ids, timeout=60)
    found = spans(log)
    assert len(found) == 2 and overlap(found) == {"slow": 1}

    log2 = tmp_path / "paused.log"
    paused_ids = await start_runs(sender, redis, "slow", events("test/slow", log2, [{"seconds": 3}, {"seconds": 0.1}]))
    while not log2.exists() or "start" not in log2.read_text():
        await asyncio.sleep(0.02)
    holder = int(log2.read_text().split()[5])
    os.kill(holder, signal.SIGSTOP)
    try:
        await wait_for_runs(redis, paused_ids, timeout=60)
    finally:
        os.kill(holder, signal.SIGCONT)


async def test_stepq_run_shows_why_a_run_waits_and_that_it_waited(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """While one run holds the only slot, ``stepq run`` of the next says it is held and why; once
    it ran, that it waited."""
    start_workers("flow_limits")
    log = tmp_path / "spans.log"
    run_ids = await start_runs(sender, redis, "slow", events("test/slow", log, [{"seconds": 3}] * 2))

    def cli(*argv: str) -> str:
        done = subprocess.run(
            [*STEPQ_CLI, *argv, "--redis-url", REDIS_URL], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    # one of the two runs first (they were sent together): the other is held
    deadline = asyncio.get_running_loop().time() + 20
    while not (held := [r for r in run_ids if "held      concurrency limit 1 reached" in cli("run", r)]):
        assert asyncio.get_running_loop().time() < deadline, [cli("run", r) for r in run_ids]
        await asyncio.sleep(0.1)
    assert "concurrency limit 1 reached" in cli("runs", "--function", "slow")
    await wait_for_runs(redis, run_ids, timeout=30)
    assert "waited    concurrency limit 1 reached" in cli("run", held[0])


async def test_a_served_official_sdk_function_gets_the_same_limits(
    tmp_path: Path, redis: Redis, sender: stepq.Client
) -> None:
    """An app of the official ``inngest`` SDK declares its limits with inngest-py's types; stepq
    reads them from the app's sync and holds them across two HTTP workers: 2 at once, 1 per customer."""
    with dev_stack(tmp_path, "tests.apps.official_flow:app"):
        second = start_http_worker(tmp_path, name="http-worker-2")
        try:
            log = tmp_path / "spans.log"
            batch = [stepq.Event(name="served/limited", data={"log": str(log), "customer": c}) for c in "abcd" * 5]
            run_ids = await start_runs(sender, redis, "served-flow-limited", batch)
            await wait_for_runs(redis, run_ids, timeout=90)
            assert {view.status for view in await runs_of(redis, "served-flow-limited")} == {"completed"}
            found = spans(log)
            assert len(found) == 20 * 2
            assert overlap(found) == {"limited": 2}
            assert overlap(found, group="key") == {f"limited/{c}": 1 for c in "abcd"}
        finally:
            second.stop()


async def test_limits_hold_with_every_kind_of_step_cancels_and_a_killed_worker(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """Features together: 36 runs of retried, parallel, sleeping and waiting steps from 3 senders,
    some cancelled midway, one worker SIGKILLed and replaced. Every run ends as it should, the
    limits (4 at once, 2 per customer) hold at every instant among the steps that ran to their end,
    and no slot, lane or waiter is left behind."""
    env = {"STEPQ_LEASE": "2"}
    victim, _ = start_workers("flow_limits", n=2, env=env)
    log = tmp_path / "spans.log"
    batches = [
        events("test/mixed", log, [{"customer": "xyz"[i % 3], "n": t * 12 + i, "flaky": i % 3 == 0} for i in range(12)])
        for t in range(3)
    ]
    run_ids = await send_concurrently(sender, redis, "mixed", batches)
    cancelled = {t * 12 + 5 for t in range(3)}
    await asyncio.sleep(0.5)
    await sender.send([stepq.Event(name="test/mixed.cancel", data={"n": n}) for n in sorted(cancelled)])
    await asyncio.sleep(1.0)
    os.kill(victim.pid, signal.SIGKILL)
    start_workers("flow_limits", env=env)
    await wait_for_runs(redis, run_ids, timeout=120)
    views = {view.run_id: view for view in await runs_of(redis, "mixed")}
    for run_id in run_ids:
        view = views[run_id]
        assert view.status in ("completed", "cancelled"), (run_id, view.status, view.error)
        if view.status == "completed":
            assert view.output == 4
    ended = Counter(view.status for view in views.values())
    assert 1 <= ended["cancelled"] <= len(cancelled)
    found = spans(log)
    assert overlap(found)["mixed"] <= 4
    assert max(overlap(found, group="key").values()) <= 2
    for pattern in (keys.slots(0, "*"), keys.slot_waiters(0, "*"), keys.lane(0, "*")):
        assert [k async for k in redis.scan_iter(match=pattern)] == []


@pytest.mark.parametrize("shard_count", [1, 4])
async def test_rate_limit_throttle_priority_and_concurrency_together(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, shard_count: int
) -> None:
    """30 events from 3 senders to a function with every kind of limit that can combine: exactly 20
    runs start (20 a minute), the other 10 are recorded skipped; no run starts before the time its
    throttle gave it (10 a second, 2 at once); never more than 2 steps at once; all 20 complete."""
    await use_shards(redis, shard_count)  # 4: runs placed over shards (runtime/placement.py)
    start_workers("flow_limits", n=2)
    log = tmp_path / "spans.log"
    batches = [events("test/combo", log, [{"prio": (t * 10 + i) % 3 * 60} for i in range(10)]) for t in range(3)]
    await asyncio.gather(*(sender.send(batch) for batch in batches))
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        views = await runs_of(redis, "combo")
        if len(views) == 30 and all(view.status in ("completed", "skipped") for view in views):
            break
        assert asyncio.get_running_loop().time() < deadline, Counter(view.status for view in views)
        await asyncio.sleep(0.1)
    statuses = Counter(view.status for view in views)
    assert statuses == {"completed": 20, "skipped": 10}, statuses
    assert all(view.reason and view.reason.startswith("rate limited") for view in views if view.status == "skipped")
    for view in views:
        if view.status == "completed" and view.held_until_ms is not None:
            assert view.started_ms is not None and view.started_ms >= view.held_until_ms, view
    assert sum(view.held_until_ms is not None for view in views) >= 15  # the throttle held most
    found = spans(log)
    assert len(found) == 40 and overlap(found) == {"combo": 2}
