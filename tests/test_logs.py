"""The worker's log lines (``stepq.workers.logs``): its own time stamper and JSON serializer write
exactly what structlog's ``TimeStamper(fmt="iso", utc=True)`` and ``JSONRenderer()`` write."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.processors import JSONRenderer, TimeStamper

import stepq
from stepq.runtime.connection import connect
from stepq.workers.embedded import EmbeddedRedis
from stepq.workers.logs import ReusedEncoders, utc_timestamp
from tests.helpers import STEPQ_CLI, WorkerOn, start_run, wait_for_run


@pytest.mark.parametrize(
    "ns",
    [
        1_700_000_000_000_000_000,  # no microseconds: isoformat leaves them out
        1_700_000_000_123_456_789,  # nanoseconds are floored, as datetime.now floors them
        1_700_000_000_000_000_999,
        1_700_000_001_000_001_000,
        1_767_225_599_999_999_999,  # the last microsecond of a year
    ],
)
def test_the_timestamp_is_structlogs_iso_utc_format(ns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    monkeypatch.setattr(time, "time_ns", lambda: ns)

    stamped = utc_timestamp(None, "info", {})

    assert stamped == {"timestamp": moment.isoformat().replace("+00:00", "Z")}


def test_the_timestamp_is_now_in_utc() -> None:
    theirs = TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    ours = utc_timestamp(None, "info", {})["timestamp"]

    def parse(stamp: str) -> dt.datetime:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    assert ours.endswith("Z") and abs((parse(ours) - parse(theirs)).total_seconds()) < 1


class Custom:
    def __repr__(self) -> str:
        return "<custom>"


class Structlogged:
    def __structlog__(self) -> str:
        return "as structlog says"


@pytest.mark.parametrize(
    "event",
    [
        {"event": "invocation", "run_id": "r1", "step": None, "attempt": 0, "duration_ms": 1.5},
        {"event": "ünïcode ☃", "nested": {"a": [1, 2, {"b": True}]}, "nan": float("nan")},
        {"event": "objects", "custom": Custom(), "structlog": Structlogged(), "level": "info"},
    ],
)
def test_the_json_line_is_json_renderers(event: dict[str, Any]) -> None:
    ours = JSONRenderer(serializer=ReusedEncoders())
    theirs = JSONRenderer()

    for _ in range(2):  # the second line with the encoder reused
        assert ours(None, "info", dict(event)) == theirs(None, "info", dict(event))


def test_options_other_than_default_still_reach_json() -> None:
    line = ReusedEncoders()({"b": 1, "a": 2}, sort_keys=True, default=repr)

    assert line == json.dumps({"b": 1, "a": 2}, sort_keys=True)


async def test_step_log_level_drops_the_per_step_line_and_keeps_the_workers_own(tmp_path: Path) -> None:
    """``STEPQ_STEP_LOG_LEVEL=debug``: a worker at the default info level runs steps without a line per
    invocation, and still logs its start and its drain; ``STEPQ_LOG_LEVEL=debug`` brings the lines back."""
    with EmbeddedRedis() as server:
        redis = connect(server.url)
        sender = stepq.Client("t-logs-sender", redis_url=server.url)
        try:
            seen: dict[str, list[dict[str, Any]]] = {}
            for name, env in {
                "quiet": {"STEPQ_STEP_LOG_LEVEL": "debug"},
                "debug": {"STEPQ_STEP_LOG_LEVEL": "debug", "STEPQ_LOG_LEVEL": "debug"},
            }.items():
                (tmp_path / name).mkdir()
                worker = WorkerOn("health_app", tmp_path / name, server.url, env)
                try:
                    worker.wait_ready()
                    run_id = await start_run(sender, redis, "block", "health/block", {"seconds": 0})
                    assert (await wait_for_run(redis, run_id)).status == "completed"
                finally:
                    worker.stop()
                assert worker.proc.returncode == 0, worker.stderr()
                seen[name] = worker.logs()
        finally:
            await redis.aclose()
    quiet = [e["event"] for e in seen["quiet"]]
    assert "invocation" not in quiet and "worker.started" in quiet and "worker.draining" in quiet
    lines = [e for e in seen["debug"] if e["event"] == "invocation"]
    assert len(lines) == 1 and lines[0]["level"] == "debug" and lines[0]["outcome"] == "completed", lines


def test_a_wrong_step_log_level_is_refused_by_name(tmp_path: Path) -> None:
    env = {**os.environ, "STEPQ_STEP_LOG_LEVEL": "loud"}
    done = subprocess.run([*STEPQ_CLI, "runs"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "STEPQ_STEP_LOG_LEVEL: unknown log level 'loud'" in done.stderr
