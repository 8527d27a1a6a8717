"""wait_for_event: an approval flow with a CEL condition, a thousand waits matched one to one, and
an event arriving at the very instant its wait times out."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.codec import unpack
from stepq.runtime.queries import get_run
from stepq.runtime.shards import shard_of
from tests.helpers import (
    TERMINAL,
    StartWorkers,
    WorkerProcess,
    all_logs,
    invocations,
    run_memo,
    run_stack,
    sha1,
    start_run,
    start_runs,
    wait_for_run,
    wait_for_runs,
)

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = pytest.mark.both_deployments

APP = "t-waits"
APPROVAL_KEY = sha1("approval")
RACE_KEY = sha1("race-wait")


async def logs_with_ends(
    workers: list[WorkerProcess], run_ids: list[str], at_least: int = 2, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The workers' logs once each run's ending invocation and at least ``at_least`` invocations in
    all are logged (a worker logs an invocation after applying it, so lines trail the run's state)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = all_logs(workers)
        calls = [e for e in logs if e.get("event") == "invocation"]
        ended = {e["run_id"] for e in calls if e.get("outcome") in TERMINAL}
        counts = Counter(e["run_id"] for e in calls)
        missing = [r for r in run_ids if r not in ended or counts[r] < at_least]
        if not missing:
            return logs
        assert time.monotonic() < deadline, f"{len(missing)} runs lack logged invocations, e.g. {missing[:3]}"
        await asyncio.sleep(0.05)


async def test_approval_resumes_only_on_the_matching_event_and_times_out_to_none(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("waits", n=2)
    lonely = await start_run(sender, redis, "approval", "test/approval.requested", {"request_id": "r-lonely"})
    run_id = await start_run(sender, redis, "approval", "test/approval.requested", {"request_id": "r-1"})
    await wait_for_run(redis, run_id, statuses=("waiting",), timeout=10)

    # Same name, other request id: the condition does not hold, the run keeps waiting.
    await sender.send(stepq.Event(name="app/approved", data={"request_id": "r-2", "by": "mallory"}))
    await asyncio.sleep(1.0)
    view = await get_run(redis, run_id)
    assert view is not None and view.status == "waiting", view
    assert APPROVAL_KEY not in await run_memo(redis, run_id)

    await sender.send(stepq.Event(name="app/approved", data={"request_id": "r-1", "by": "ada"}))
    done = await wait_for_run(redis, run_id, timeout=10)
    assert done.status == "completed", done.error
    assert done.output == {"request_id": "r-1", "by": "ada"}
    memo = unpack((await run_memo(redis, run_id))[APPROVAL_KEY])
    assert memo["name"] == "app/approved" and memo["data"] == {"request_id": "r-1", "by": "ada"}
    assert await run_stack(redis, run_id) == [APPROVAL_KEY]

    # Nobody approves the other request: after its 10 s it resumes with None.
    timed_out = await wait_for_run(redis, lonely, timeout=30)
    assert timed_out.status == "completed", timed_out.error
    assert timed_out.output is None
    assert (await run_memo(redis, lonely))[APPROVAL_KEY] == b"\xc0"  # a timed-out wait memoizes null
    assert timed_out.ended_ms is not None and timed_out.started_ms is not None
    assert timed_out.ended_ms - timed_out.started_ms >= 10_000


async def test_a_thousand_waits_each_resume_once_with_their_own_event(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    workers = start_workers("waits", n=2)
    n = 1000
    request_ids = [f"bulk-{i}" for i in range(n)]
    run_ids = await start_runs(
        sender,
        redis,
        "approval",
        [stepq.Event(name="test/approval.requested", data={"request_id": r, "timeout": "120s"}) for r in request_ids],
    )
    assert len(set(run_ids)) == n
    await wait_for_runs(redis, run_ids, statuses=("waiting",), timeout=120)

    approvals = [stepq.Event(name="app/approved", data={"request_id": r}) for r in request_ids]
    random.Random(7).shuffle(approvals)
    for i in range(0, n, 100):
        await sender.send(approvals[i : i + 100])
    await wait_for_runs(redis, run_ids, timeout=120)

    logs = await logs_with_ends(workers, run_ids)
    per_run = Counter(e["run_id"] for e in logs if e.get("event") == "invocation")
    wrong: list[tuple[Any, ...]] = []
    for run_id, request_id in zip(run_ids, request_ids, strict=True):
        view = await get_run(redis, run_id, with_steps=False)
        assert view is not None
        stack = await run_stack(redis, run_id)
        if view.status != "completed" or view.output != {"request_id": request_id} or stack != [APPROVAL_KEY]:
            wrong.append((run_id, request_id, view.status, view.output, stack))
        # one invocation to reach the wait, one to resume after it
        elif per_run[run_id] != 2:
            wrong.append((run_id, request_id, "invocations", invocations(logs, run_id)))
    assert wrong == [], f"{len(wrong)} runs went wrong, e.g. {wrong[:3]}"


def race_started(request_id: str) -> stepq.Event:
    return stepq.Event(name="test/race.started", data={"request_id": request_id})


async def test_event_at_the_timeout_instant_has_exactly_one_outcome(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    """200 runs wait 1 s; each one's event is sent within ±25 ms of its wait's timeout
    (the instant its timeout job is due).

    Whichever comes first wins: the wait step is memoized once (the event or null, never both, never
    twice), the run re-enters once after it and completes with the outcome memoized.
    """
    workers = start_workers("waits", n=2)
    n = 200
    request_ids = [f"race-{i}" for i in range(n)]
    run_ids: list[str] = []
    offsets_ms = [-25, -15, -10, -5, -2, 0, 0, 2, 5, 10, 15, 25]
    targets: dict[int, float] = {}  # run index -> when to send its event (time.time())
    sent: set[int] = set()

    async def start() -> None:
        # 10 at a time over a few seconds: so are their timeouts, and at each instant the workers
        # handle a few timeouts, not 200 (a burst which, on 2 cores shared with a cluster's 6 nodes,
        # delays every event past every timeout)
        for first in range(0, n, 10):
            chunk = request_ids[first : first + 10]
            run_ids.extend(await start_runs(sender, redis, "race", [race_started(r) for r in chunk]))
            await asyncio.sleep(0.1)

    async def send_when_due() -> None:
        # One sender, sending each tick's due events as one batch, keeps the send latency to a few ms.
        while len(sent) < n:
            now = time.time()
            due = [i for i, at in targets.items() if at <= now and i not in sent]
            if due:
                await sender.send([stepq.Event(name="app/race", data={"request_id": request_ids[i]}) for i in due])
                sent.update(due)
            await asyncio.sleep(0.001)

    async def target() -> None:
        # Each wait times out at its timeout job's due time: target it as soon as the job shows.
        deadline = time.monotonic() + 60
        while len(targets) < n:
            assert time.monotonic() < deadline, f"only {len(targets)} of {n} runs reached their wait"
            todo = [i for i in range(len(run_ids)) if i not in targets]
            async with redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    pipe.zscore(keys.queue(shard_of(run_ids[i]), APP), f"{run_ids[i]}:s{RACE_KEY}:timer")
                scores = await pipe.execute() if todo else []
            for i, score in zip(todo, scores, strict=True):
                if score is not None:
                    targets[i] = score / 1000 + offsets_ms[i % len(offsets_ms)] / 1000
            await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(start(), target(), send_when_due()), timeout=90)
    await wait_for_runs(redis, run_ids, timeout=60)

    logs = await logs_with_ends(workers, run_ids)
    outcomes: Counter[str] = Counter()
    wrong: list[tuple[Any, ...]] = []
    for run_id, request_id in zip(run_ids, request_ids, strict=True):
        view = await get_run(redis, run_id, with_steps=False)
        assert view is not None
        stack = await run_stack(redis, run_id)
        memo_raw = (await run_memo(redis, run_id)).get(RACE_KEY)
        memo = unpack(memo_raw) if memo_raw is not None else "absent"
        expected: dict[str, Any] | None
        if memo is None:
            expected = {"matched": False, "data": None}
            outcomes["timeout"] += 1
        elif isinstance(memo, dict) and memo.get("name") == "app/race":
            expected = {"matched": True, "data": {"request_id": request_id}}
            outcomes["event"] += 1
            if memo.get("data") != {"request_id": request_id}:
                wrong.append((run_id, "memo of another run's event", memo))
        else:
            expected = None
            wrong.append((run_id, "memo", memo))
        if view.status != "completed" or stack != [RACE_KEY] or view.output != expected:
            wrong.append((run_id, view.status, stack, view.output, memo))
        elif len(invocations(logs, run_id)) != 2:
            wrong.append((run_id, "invocations", invocations(logs, run_id)))
    assert wrong == [], f"{len(wrong)} runs went wrong, e.g. {wrong[:3]}"
    # The offsets straddle the timeout, so both outcomes occur: the race was really run.
    assert outcomes["event"] > 0 and outcomes["timeout"] > 0, outcomes
