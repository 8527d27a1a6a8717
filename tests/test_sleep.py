"""Issue 2.3: a sleeping run holds no worker job and wakes no earlier than asked."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.queries import get_run
from stepq.runtime.shards import shard_of
from tests.helpers import (
    StartWorkers,
    invocations,
    read_lines,
    run_memo,
    running_jobs,
    sha1,
    start_run,
    wait_for_run,
    wait_until_idle,
)

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = pytest.mark.both_deployments

APP = "t-sleeps"


def times(lines: list[str], what: str) -> list[float]:
    return [float(line.split()[1]) for line in lines if line.split()[0] == what]


async def test_sleep_parks_the_run_with_no_job_running_and_resumes_after_the_duration(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    [worker] = start_workers("sleeps")
    log = tmp_path / "nap.log"
    run_id = await start_run(sender, redis, "nap", "test/nap", {"log": str(log)})

    parked = await wait_for_run(redis, run_id, statuses=("sleeping",), timeout=10)
    assert parked.wake_at_ms is not None
    await wait_until_idle(redis)
    calls_when_parked = len(invocations(worker.logs(), run_id))
    samples = 0
    while time.time() * 1000 < parked.wake_at_ms - 300:
        view = await get_run(redis, run_id, with_steps=False)
        assert view is not None and view.status == "sleeping"
        assert await running_jobs(redis) == []
        queued = await redis.zrange(keys.queue(shard_of(run_id), APP), 0, -1, withscores=True)
        assert all(score >= parked.wake_at_ms for _, score in queued), queued
        samples += 1
        await asyncio.sleep(0.1)
    assert samples >= 5
    assert len(invocations(worker.logs(), run_id)) == calls_when_parked

    done = await wait_for_run(redis, run_id, timeout=15)

    assert done.status == "completed", done.error
    lines = read_lines(log)
    [after] = times(lines, "after")
    sleep_started = times(lines, "sleep-call")[0]
    assert after - sleep_started >= 2.0
    assert done.output is not None and done.output["after"] == after
    assert done.output["before"] <= sleep_started
    # A finished sleep is memoized as null.
    assert (await run_memo(redis, run_id))[sha1("nap")] == b"\xc0"
    assert [s.name for s in done.steps] == ["before", "nap", "after"]


async def test_a_bare_int_sleep_is_milliseconds_as_in_inngest_py(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("sleeps")
    log = tmp_path / "nap-ms.log"
    run_id = await start_run(sender, redis, "nap-ms", "test/nap.ms", {"log": str(log)})

    # Read as seconds, step.sleep("nap", 1000) would sleep for 16 minutes, far past this wait.
    done = await wait_for_run(redis, run_id, timeout=15)

    assert done.status == "completed", done.error
    lines = read_lines(log)
    [after] = times(lines, "after")
    assert after - times(lines, "sleep-call")[0] >= 1.0
    assert [s.name for s in done.steps] == ["nap", "after"]


async def test_sleep_until_a_timezone_aware_datetime_resumes_no_earlier(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("sleeps")
    log = tmp_path / "nap-until.log"
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    until = dt.datetime.now(tz) + dt.timedelta(seconds=2)
    # Whole milliseconds: test_engine covers how sub-millisecond parts are handled.
    until = until.replace(microsecond=until.microsecond // 1000 * 1000)
    run_id = await start_run(
        sender, redis, "nap-until", "test/nap.until", {"log": str(log), "until": until.isoformat()}
    )

    parked = await wait_for_run(redis, run_id, statuses=("sleeping",), timeout=10)
    assert parked.wake_at_ms == round(until.timestamp() * 1000)
    await wait_until_idle(redis)
    done = await wait_for_run(redis, run_id, timeout=15)

    assert done.status == "completed", done.error
    [after] = times(read_lines(log), "after")
    assert after >= until.timestamp()
    assert done.output == {"after": after}
