"""The worker's log lines (``stepq.workers.logs``): its own time stamper and JSON serializer write
exactly what structlog's ``TimeStamper(fmt="iso", utc=True)`` and ``JSONRenderer()`` write."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from structlog.processors import JSONRenderer, TimeStamper

from stepq.workers.logs import ReusedEncoders, utc_timestamp


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
