"""Flow control of run starts (issue 11): rate limit, idempotency, throttle and singleton, for
in-process functions (tests/apps/flow_starts.py) and served ones (the official inngest SDK).

Real Redis, real worker processes. Each function's first step logs when it ran (tests/apps/
flow_starts.py); the runs' records say what flow control did (status ``skipped`` and a reason, a
throttled run's ``held``), as ``stepq run`` and ``stepq runs`` show them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.errors import FunctionConfigError
from stepq.runtime import keys
from stepq.runtime.queries import RunView, list_runs
from tests.helpers import (
    REDIS_URL,
    STEPQ_CLI,
    StartWorkers,
    read_lines,
    runs_of,
    wait_for_run,
    wait_for_runs,
)

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
        tag, at, pid, run_id = line.split()
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
        assert view.reason == "rate limited: 10 runs per 60 s"
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
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.count("rate limited: 10 runs per 60 s") == 16, out
    one = subprocess.run(
        [*STEPQ_CLI, "run", skipped[0].run_id, "--redis-url", REDIS_URL], capture_output=True, text=True, check=True
    ).stdout
    assert "status    skipped" in one and "skipped   rate limited: 10 runs per 60 s" in one, one
