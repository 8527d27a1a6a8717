"""The dashboard's pure formatting (stepq.runtime.dashboard.views): no Redis, no server."""

from __future__ import annotations

from stepq.runtime.dashboard import views, waterfall
from stepq.runtime.dashboard.auth import DashboardAuth, LoginLimiter, safe_next
from stepq.runtime.queries import RunView, StepView
from stepq.runtime.timeline import Attempt, Timeline, TimelineItem


def test_times_durations_and_json() -> None:
    assert views.clock(None) == "-"
    assert views.clock(1_764_496_800_123) == "2025-11-30 10:00:00.123"
    assert views.iso(1_764_496_800_123) == "2025-11-30T10:00:00.123+00:00"
    assert [views.duration(ms) for ms in (None, -5, 850, 2_400, 185_000, 7_620_000, 273_600_000)] == [
        "-", "0 ms", "850 ms", "2.4 s", "3 min 05 s", "2 h 07 min", "3 d 4 h",
    ]  # fmt: skip
    assert views.ago(1_000, 4_000) == "3.0 s ago"
    assert views.ago(70_000, 10_000) == "in 1 min 00 s"
    assert views.pretty_json({"a": [1, "é"]}) == '{\n  "a": [\n    1,\n    "é"\n  ]\n}'
    assert views.short_json({"k": "x" * 500}, limit=20) == '{"k":"xxxxxxxxxxxxx…'
    assert len(views.short_json({"k": "x" * 500}, limit=20)) == 20
    assert views.error_text({"name": "ValueError", "message": "bad", "stack": "..."}) == "ValueError: bad"
    assert views.error_text("boom") == "boom"
    assert views.status_class("failed") == "st-failed" and views.status_class('x" onclick="') == "st-other"
    assert views.page_numbers(1234, False) == "1,234" and views.page_numbers(10_000, True) == "10,000+"


def test_memo_values_as_shown() -> None:
    envelope = {"__ENCRYPTED__": True, "__STRATEGY__": "inngest/libsodium", "data": "c2VjcmV0"}
    assert views.memo_view({"data": envelope}) == views.Memo("encrypted", "")
    assert views.memo_view(envelope).kind == "encrypted"
    assert views.memo_view({"data": {"n": 1}}) == views.Memo("data", '{\n  "n": 1\n}')
    assert views.memo_view({"error": {"name": "E", "message": "m"}}).kind == "error"
    assert views.memo_view(None).kind == "null"
    assert views.memo_view({"name": "order/paid", "data": {}, "id": "e1"}).kind == "event"


def test_waterfall_geometry() -> None:
    rows = [
        views.Row("a", "a", "step", "ok", 1_000, 1_100),
        views.Row("b", "b", "sleep", "ok", 1_100, 2_000),
        views.Row("c", "c", "step", "pending", 2_000, None),  # still running: drawn up to now
        views.Row("d", "d", "step", "ok", 1_999, 2_000),  # 1 ms: still visible
        views.Row("e", "e", "step", "pending", None, None),  # never started: no bar
    ]
    rows[0].attempts = [views.AttemptRow(1, 1_000, 1_050, "error", "boom"), views.AttemptRow(2, 1_060, 1_100, "ok")]
    scale = views.lay_out(rows, now_ms=3_000, origin_ms=1_000)
    assert scale == views.Scale(1_000, 2_000)
    assert rows[0].bar == views.Bar(0.0, 5.0, False)
    assert rows[1].bar == views.Bar(5.0, 45.0, False)
    assert rows[2].bar == views.Bar(50.0, 50.0, True)
    assert rows[3].bar is not None and rows[3].bar.width == views.MIN_BAR_PERCENT
    assert rows[4].bar is None
    assert [a.bar for a in rows[0].attempts] == [views.Bar(0.0, 2.5, False), views.Bar(3.0, 2.0, False)]
    for row in rows[:4]:
        assert row.bar is not None and row.bar.left >= 0 and row.bar.left + row.bar.width <= 100
    assert scale.ticks(2) == [(0.0, "+0 ms"), (50.0, "+1.0 s"), (100.0, "+2.0 s")]
    # a span before the run's start widens the axis rather than drawing off it
    early = views.Scale.of([views.Span(500, 600)], now_ms=700, origin_ms=1_000)
    assert early.origin_ms == 500
    assert views.Scale.of([], now_ms=5).span_ms == 1


def test_login_checks() -> None:
    config = DashboardAuth(dev=False, token="tok", signing_key="key")
    assert config.accepts("tok") and config.accepts(" key ") and not config.accepts("") and not config.accepts("to")
    assert not DashboardAuth(dev=False).accepts("")
    # the session secret survives a restart (derived), and changing a credential changes it
    assert config.secret() == DashboardAuth(dev=False, token="tok", signing_key="key").secret()
    assert config.secret() != DashboardAuth(dev=False, token="tok2", signing_key="key").secret()
    assert DashboardAuth(dev=False, token="t", session_secret="s").secret() == "s"
    assert config.fingerprint("s") != DashboardAuth(dev=False, token="other", signing_key="key").fingerprint("s")
    assert safe_next("/ui", "/ui/runs?x=1") == "/ui/runs?x=1"
    for bad in ("//evil.example/", "https://evil.example/", "/elsewhere", "/ui\\@evil", None, ""):
        assert safe_next("/ui", bad) == "/ui/"
    limiter = LoginLimiter(failures=2, window_s=10)
    limiter.failed("a", now=0)
    assert limiter.blocked("a", now=1) == 0
    limiter.failed("a", now=1)
    assert limiter.blocked("a", now=2) == 8 and limiter.blocked("b", now=2) == 0
    assert limiter.blocked("a", now=11) == 0


def test_timeline_rows() -> None:
    envelope = {"__ENCRYPTED__": True, "__STRATEGY__": "inngest/libsodium", "data": "c2VjcmV0"}
    run = RunView("r1", "app-fn", "app", "running", 1_000, 1_000, None, None)
    run.steps = [
        StepView("k1", "charge", 2, 3, 10, 1_200, None, {"data": envelope}, True),
        StepView("k3", "wait-paid", 1, 0, None, 1_900, None, {"name": "paid", "data": {}, "id": "e9"}, True),
    ]
    boom = {"name": "ValueError", "message": "declined"}
    items = [
        TimelineItem("", "throttled", "flow", 1_000, 1_050, "completed", detail={"held": "throttled (key a)"}),
        TimelineItem(
            "k1",
            "charge",
            "step",
            1_100,
            1_200,
            "completed",
            attempts=[
                Attempt(1, 1_100, 1_110, "error", boom),
                Attempt(2, 1_150, 1_190, "ok"),
                Attempt(2, 1_160, 1_200, "duplicate", None, "duplicate"),
            ],
            memo_present=True,
        ),
        TimelineItem("k2", "nap", "sleep", 1_200, None, "sleeping", detail={"wake_at_ms": 61_200}),
        TimelineItem(
            "k3",
            "wait-paid",
            "wait",
            1_300,
            1_900,
            "completed",
            detail={"event": "paid", "if": "async.data.id == 7", "timeout_ms": 60_000, "matched_event_id": "e9"},
            memo_present=True,
        ),
        TimelineItem(
            "k4",
            "call",
            "invoke",
            1_300,
            None,
            "running",
            group="3",
            detail={"function": "app-child", "timeout_ms": 366 * 86_400_000, "child_run_id": "r2"},
        ),
        TimelineItem(
            "k5",
            "other",
            "step",
            1_300,
            None,
            "retrying",
            group="3",
            detail={"retry_at_ms": 5_000},
            attempts=[Attempt(1, 1_300, 1_310, "error", boom)],
        ),
    ]
    rows = waterfall.rows(Timeline(run, items), now_ms=2_000)
    flow, charge, nap, wait, invoke, other = rows
    assert flow.kind == "flow" and flow.details == ["start held: throttled (key a)"]
    assert charge.status == "completed" and charge.error == "" and charge.duplicates == 1 and charge.committed
    assert [a.outcome for a in charge.attempts] == ["error", "ok", "duplicate"]
    assert charge.attempts[0].error == "ValueError: declined"
    assert charge.attempts[2].error == "ran again; its write was refused (duplicate)"
    assert charge.memo == views.Memo("encrypted", "")
    assert nap.details == ["wakes at 1970-01-01 00:01:01.200 UTC (in 59.2 s)"] and nap.memo is None
    assert wait.details == ["waits for event paid if async.data.id == 7, timeout 1 min 00 s", "matched event e9"]
    assert wait.memo is not None and wait.memo.kind == "event"
    assert invoke.details == ["invokes app-child"]  # a year or more: no timeout given
    assert invoke.child_run_id == "r2" and invoke.group == other.group == "3" and not invoke.committed
    assert other.error == "ValueError: declined" and other.details[-1].startswith("next attempt at")
