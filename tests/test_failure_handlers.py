"""on_failure handlers and the run-end events: ``stepq/function.failed`` when a run fails for good,
``stepq/function.finished`` when it ends."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

import stepq
from stepq.runtime.queries import RunView
from tests.helpers import StartWorkers, read_lines, runs_of, start_run, wait_for_run

APP = "t-failures"


def records(log: Path, what: str) -> list[dict[str, Any]]:
    return [r for r in (json.loads(line) for line in read_lines(log)) if r["what"] == what]


async def finished_runs_of(redis: Redis, function: str, count: int, timeout: float = 15.0) -> list[RunView]:
    """Wait until ``function`` has at least ``count`` runs, all ended; return them."""
    deadline = time.monotonic() + timeout
    while True:
        views = await runs_of(redis, function)
        if len(views) >= count and all(v.status in ("completed", "failed", "cancelled") for v in views):
            return views
        assert time.monotonic() < deadline, f"{function}: {[(v.run_id, v.status) for v in views]}"
        await asyncio.sleep(0.02)


async def test_on_failure_runs_once_with_the_error_and_the_original_event(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("failures")
    log = tmp_path / "events.log"
    [event_id] = await sender.send(stepq.Event(name="test/fragile", data={"log": str(log)}))
    [run_id] = [v.run_id for v in await runs_of(redis, "fragile") if event_id in v.event_ids]

    failed = await wait_for_run(redis, run_id, timeout=15)
    assert failed.status == "failed"
    assert failed.error["name"] == "ValueError"
    assert failed.error["message"] == "fragile broke on attempt 1"  # after its one retry

    [handler_run] = await finished_runs_of(redis, "fragile-failure", 1)
    [watcher_run] = await finished_runs_of(redis, "failed-watcher", 1)
    assert handler_run.status == "completed", handler_run.error
    assert watcher_run.status == "completed", watcher_run.error
    await asyncio.sleep(1.0)  # any duplicate delivery would have started another run by now

    [handled] = records(log, "on_failure")
    assert handled["function_id"] == "t-failures-fragile"
    assert handled["run_id"] == run_id
    assert handled["error"]["name"] == "ValueError"
    assert handled["error"]["message"] == "fragile broke on attempt 1"
    assert handled["event"]["name"] == "test/fragile"
    assert handled["event"]["id"] == event_id
    assert handled["event"]["data"] == {"log": str(log)}
    [seen] = records(log, "failed")
    assert seen["run_id"] == run_id and seen["function_id"] == "t-failures-fragile"
    assert seen["error"] == handled["error"]
    assert len(await runs_of(redis, "fragile-failure")) == 1
    assert len(await runs_of(redis, "failed-watcher")) == 1
    # The handler's own completion is no failure: nothing else was triggered.
    assert records(log, "finished") == []


async def test_function_finished_is_emitted_for_a_completed_run(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("failures")
    log = tmp_path / "events.log"
    run_id = await start_run(sender, redis, "steady", "test/steady", {"log": str(log), "n": 1})

    done = await wait_for_run(redis, run_id)
    assert done.status == "completed", done.error
    assert done.output == {"n": 2}

    [watcher_run] = await finished_runs_of(redis, "finished-watcher", 1)
    assert watcher_run.status == "completed", watcher_run.error
    await asyncio.sleep(1.0)
    [finished] = records(log, "finished")
    assert finished["function_id"] == "t-failures-steady"
    assert finished["run_id"] == run_id
    assert finished["status"] == "completed"
    assert finished["result"] == {"n": 2}
    assert finished["event"]["name"] == "test/steady"
    assert finished["event"]["data"] == {"log": str(log), "n": 1}
    # A completed run is no failure.
    assert records(log, "failed") == [] and records(log, "on_failure") == []
    assert await runs_of(redis, "failed-watcher") == []
    assert len(await runs_of(redis, "finished-watcher")) == 1
