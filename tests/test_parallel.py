"""ctx.group.parallel: 20 steps fanned out over two workers, each run once, results in order, and
the function re-entered once after all of them finished."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from tests.apps.parallel import N
from tests.helpers import StartWorkers, all_logs, invocations, read_lines, sha1, start_run, wait_for_run

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = pytest.mark.both_deployments


async def test_twenty_parallel_steps_run_once_each_and_the_run_rejoins_once(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """What "re-enters once after all finish" means, measured two ways.

    The function writes ``joined`` right after ``ctx.group.parallel`` returns: code there runs only
    in an invocation that found all 20 results memoized, i.e. a re-entry after the fan-in. Exactly
    one ``joined`` line, written after every ``step-<i>`` line, is that property.

    The ``body`` line (written outside any step) counts every execution of the function body:
    1 (the invocation that planned the 20 steps) + 20 (each planned step's job re-enters the
    function to reach its target step) + 1 (the join). Any extra re-entry, before or after the
    join, would show as a 23rd. The workers' ``invocation`` log lines must tell the same story: one
    per planned step (its ``step`` field names it), the planning one, and one that completed the run.
    """
    workers = start_workers("parallel", n=2)
    log = tmp_path / "fan.log"
    run_id = await start_run(sender, redis, "fan", "test/fan", {"log": str(log)})

    done = await wait_for_run(redis, run_id, timeout=30)

    assert done.status == "completed", done.error
    assert done.output == [{"i": i, "square": i * i} for i in range(N)]

    lines = [line.split() for line in read_lines(log)]
    what = Counter(w for w, _ in lines)
    assert what == Counter({"body": 1 + N + 1, "joined": 1, **{f"step-{i}": 1 for i in range(N)}})
    joined_at = next(float(t) for w, t in lines if w == "joined")
    assert all(joined_at >= float(t) for w, t in lines if w.startswith("step-"))

    # Every step's result is memoized once, in the stack once.
    assert sorted(s.key for s in done.steps) == sorted(sha1(f"p{i}") for i in range(N))
    assert all(s.done for s in done.steps)

    # A worker logs an invocation after applying it, so a line may trail the run's end a little.
    deadline = time.monotonic() + 10
    while len(calls := invocations(all_logs(workers), run_id)) < N + 2:
        assert time.monotonic() < deadline, f"only {len(calls)} invocations logged: {calls}"
        await asyncio.sleep(0.02)
    planned = Counter(c["step"] for c in calls if c.get("step") in {f"p{i}" for i in range(N)})
    assert planned == Counter({f"p{i}": 1 for i in range(N)})
    discovery = [c for c in calls if c.get("step") not in planned]
    # (Not ordered: each worker logs an invocation after applying it, and the workers' logs are apart.)
    assert sorted(c["outcome"] for c in discovery) == ["completed", f"fan-out:{N}"], discovery
    assert len(calls) == N + 2
