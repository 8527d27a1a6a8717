"""Cancellation: by a matching event, by the API and by ``stepq cancel``, while a run sleeps and
while it waits for an event; and the start and finish timeouts, which cancel a run on their own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.queries import RunView, get_run
from stepq.runtime.shards import shard_of
from tests.helpers import (
    REDIS_URL,
    ROOT,
    STEPQ_CLI,
    StartWorkers,
    queued_jobs,
    read_lines,
    start_run,
    wait_for_run,
)

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = pytest.mark.both_deployments

APP = "t-cancel"
SLEEPER = "sleeper"
WAITER = "waiter"


def steps_run(log: Path, run_id: str) -> list[str]:
    return [line.split()[1] for line in read_lines(log) if line.split()[0] == run_id]


async def wait_members(redis: Redis, event_name: str, run_id: str) -> list[str]:
    """The run's registered waits (wait steps and cancellation rules) for an event name."""
    members: list[bytes] = await redis.hkeys(keys.waits(shard_of(run_id), event_name))  # type: ignore[misc]
    return [m.decode() for m in members if m.decode().startswith(run_id + "|")]


async def park(redis: Redis, sender: stepq.Client, log: Path, cancel_id: str) -> tuple[str, str, float]:
    """Start a sleeper and a waiter (cancel id ``cancel_id``) and return them once parked, with the
    time (epoch s) by which both would have resumed."""
    data = {"log": str(log), "id": cancel_id}
    sleeper = await start_run(sender, redis, SLEEPER, "test/sleeper", data)
    waiter = await start_run(sender, redis, WAITER, "test/waiter", data)
    slept = await wait_for_run(redis, sleeper, statuses=("sleeping",), timeout=10)
    await wait_for_run(redis, waiter, statuses=("waiting",), timeout=10)
    assert slept.wake_at_ms is not None
    resume_by = slept.wake_at_ms / 1000
    for run_id in (sleeper, waiter):
        assert steps_run(log, run_id) == ["before"]
        jobs = await queued_jobs(redis, APP, run_id)
        assert jobs, f"run {run_id} has no job queued while parked"  # its wake-up or its wait's timeout
        for job in jobs:
            score = await redis.zscore(keys.queue(shard_of(job), APP), job)
            assert score is not None
            resume_by = max(resume_by, score / 1000)
    assert await wait_members(redis, "app/never", waiter)
    return sleeper, waiter, resume_by


async def assert_cancelled_for_good(
    redis: Redis, log: Path, run_ids: list[str], resume_by: float, reason: str
) -> list[RunView]:
    views = []
    for run_id in run_ids:
        view = await wait_for_run(redis, run_id, timeout=10)
        assert view.status == "cancelled", (view.status, view.error)
        assert reason in view.error["message"], view.error
        assert await queued_jobs(redis, APP, run_id) == []
        assert await wait_members(redis, "app/never", run_id) == []
        assert await wait_members(redis, "app/cancel", run_id) == []
    # Past the moment the sleep would have ended and the wait timed out, nothing more ran.
    await asyncio.sleep(max(0.0, resume_by - time.time()) + 1.5)
    for run_id in run_ids:
        later = await get_run(redis, run_id)
        assert later is not None and later.status == "cancelled"
        assert steps_run(log, run_id) == ["before"], f"run {run_id} ran steps after it was cancelled"
        assert await queued_jobs(redis, APP, run_id) == []
        views.append(later)
    return views


async def test_cancel_by_matching_event_while_sleeping_and_waiting(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("cancels")
    log = tmp_path / "steps.log"
    sleeper, waiter, resume_by = await park(redis, sender, log, "order-1")
    other = await start_run(sender, redis, SLEEPER, "test/sleeper", {"log": str(log), "id": "order-2"})
    await wait_for_run(redis, other, statuses=("sleeping",), timeout=10)
    for run_id in (sleeper, waiter, other):
        assert await wait_members(redis, "app/cancel", run_id)

    await sender.send(stepq.Event(name="app/cancel", data={"id": "order-1"}))

    await assert_cancelled_for_good(redis, log, [sleeper, waiter], resume_by, "app/cancel")
    # The rule's condition compares ids: the run of order-2 was not cancelled.
    untouched = await wait_for_run(redis, other, timeout=15)
    assert untouched.status == "completed", untouched.error
    assert steps_run(log, other) == ["before", "after"]


async def test_cancel_by_api_while_sleeping_and_waiting(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("cancels")
    log = tmp_path / "steps.log"
    sleeper, waiter, resume_by = await park(redis, sender, log, "order-1")

    assert await sender.cancel(sleeper, reason="the customer changed their mind") is True
    assert await sender.cancel(waiter, reason="the customer changed their mind") is True

    await assert_cancelled_for_good(redis, log, [sleeper, waiter], resume_by, "the customer changed their mind")
    # A run that ended cannot be cancelled again.
    assert await sender.cancel(sleeper) is False


def stepq_cancel(run_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPQ_CLI, "cancel", run_id, "--redis-url", REDIS_URL],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cancel_from_the_command_line_while_sleeping_and_waiting(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("cancels")
    log = tmp_path / "steps.log"
    sleeper, waiter, resume_by = await park(redis, sender, log, "order-1")

    for run_id in (sleeper, waiter):
        result = await asyncio.to_thread(stepq_cancel, run_id)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"cancelled": run_id}

    await assert_cancelled_for_good(redis, log, [sleeper, waiter], resume_by, "cancelled from the command line")
    again = await asyncio.to_thread(stepq_cancel, sleeper)
    assert again.returncode != 0 and "not cancelled" in again.stderr


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_finish_timeout_cancels_a_run_still_sleeping(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("cancels")
    log = tmp_path / "steps.log"
    run_id = await start_run(sender, redis, "finish-timeout", "test/finish-timeout", {"log": str(log)})

    done = await wait_for_run(redis, run_id, timeout=15)

    assert done.status == "cancelled", (done.status, done.error)
    assert "finish" in done.error["message"], done.error
    assert done.started_ms is not None and done.ended_ms is not None
    assert done.ended_ms - done.started_ms >= 2000
    assert steps_run(log, run_id) == ["before"]
    assert await queued_jobs(redis, APP, run_id) == []  # its 10 s wake-up is gone


async def test_start_timeout_cancels_a_run_no_worker_started_in_time(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    [first] = start_workers("cancels")  # registers the app, so the event starts a run
    first.stop()
    log = tmp_path / "steps.log"
    sent_at = time.time()
    run_id = await start_run(sender, redis, "start-timeout", "test/start-timeout", {"log": str(log)})
    await asyncio.sleep(max(0.0, sent_at + 2.0 - time.time()))
    queued = await get_run(redis, run_id)
    assert queued is not None and queued.status == "queued"

    start_workers("cancels")
    done = await wait_for_run(redis, run_id, timeout=15)

    assert done.status == "cancelled", (done.status, done.error)
    assert "start" in done.error["message"], done.error
    assert steps_run(log, run_id) == []
    assert done.steps == []


async def test_a_run_ended_after_a_killed_worker_started_its_job_leaves_no_retry_counter(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """arq counts a job's tries in ``arq:retry:<job>`` when a worker starts it (kept a day). A worker
    killed right after that leaves the counter with no lock; when the run then ends, its jobs go and
    their counters must go with them, or every such kill leaks a key."""
    [first] = start_workers("cancels")  # registers the app, so the event starts a run
    first.stop()
    run_id = await start_run(sender, redis, SLEEPER, "test/sleeper", {"log": str(tmp_path / "steps.log"), "id": "x"})
    [job_id] = await queued_jobs(redis, APP, run_id)
    await redis.incr(keys.retry(job_id))  # what arq did as the killed worker started the job

    assert await sender.cancel(run_id, reason="the worker died") is True

    assert await queued_jobs(redis, APP, run_id) == []
    assert await redis.exists(keys.job(job_id), keys.retry(job_id)) == 0
