"""A run's timeline (runtime/timeline.py) from its history (runtime/history.py).

Real workers run every step kind (a retried step, a sleep, a parallel pair, a wait that an event
satisfies, a wait that times out, an invoke) and a run that fails; a worker paused past its lease
shows as a duplicate execution; the history is bounded and expires with its run; the HTTP endpoint
answers with the signing key only. ``build_timeline`` is also tested alone, from made-up entries.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

import stepq
from stepq.opcodes import hash_step_id
from stepq.runtime import history, keys
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.history import HistoryEntry
from stepq.runtime.queries import RunView, StepView
from stepq.runtime.store import RunStore
from stepq.runtime.timeline import Timeline, TimelineItem, build_timeline, get_timeline
from stepq.signing import bearer
from tests.helpers import REDIS_URL, StartWorkers, invocations, runs_of, start_run, wait_for_run

SIGNING_KEY = "signkey-test-7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b"


def by_name(timeline: Timeline) -> dict[str, TimelineItem]:
    return {item.name: item for item in timeline.items}


async def timeline_until(redis: Redis, run_id: str, ready: Any, timeout: float = 20.0) -> Timeline:
    deadline = time.monotonic() + timeout
    while True:
        found = await get_timeline(redis, run_id)
        if found is not None and ready(found):
            return found
        assert time.monotonic() < deadline, f"timeline never got there: {found}"
        await asyncio.sleep(0.02)


# -- real workers ---------------------------------------------------------------------------------


async def test_a_run_of_every_step_kind_has_its_timeline_and_the_api_serves_it(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("timeline")
    run_id = await start_run(sender, redis, "tour", "timeline/tour", {"ref": "r-1"})
    waiting = await timeline_until(redis, run_id, lambda t: by_name(t).get("approve", None) is not None)
    assert by_name(waiting)["approve"].status == "waiting" and by_name(waiting)["approve"].end_ms is None
    [event_id] = await sender.send(stepq.Event(name="timeline/approved", data={"ref": "r-1"}))

    view = await wait_for_run(redis, run_id, timeout=30)
    assert view.status == "completed", view.error
    timeline = await get_timeline(redis, run_id)
    assert timeline is not None and timeline.failed_at is None

    names = [item.name for item in timeline.items]
    assert names[:2] == ["flaky", "nap"] and set(names[2:4]) == {"left", "right"}, names
    assert names[4:] == ["approve", "never", "call"], names
    items = by_name(timeline)
    flaky = items["flaky"]
    assert (flaky.kind, flaky.status, flaky.key, flaky.memo_present) == (
        "step",
        "completed",
        hash_step_id("flaky"),
        True,
    )
    first, second = flaky.attempts
    assert (first.number, first.outcome, first.error) == (
        1,
        "error",
        {"name": "ConnectionError", "message": "upstream down"},
    )
    assert (second.number, second.outcome, second.error) == (2, "ok", None)
    assert first.started_ms is not None and first.ended_ms is not None and first.started_ms <= first.ended_ms
    assert second.started_ms is not None and first.ended_ms <= second.started_ms <= second.ended_ms  # type: ignore[operator]
    assert flaky.start_ms == first.started_ms and flaky.end_ms == second.ended_ms

    nap = items["nap"]
    assert (nap.kind, nap.status, nap.attempts) == ("sleep", "completed", [])
    assert nap.start_ms is not None and nap.end_ms is not None
    assert nap.detail["wake_at_ms"] >= nap.start_ms + 1000 and nap.end_ms >= nap.detail["wake_at_ms"]

    left, right = items["left"], items["right"]
    assert left.group is not None and left.group == right.group
    for side in (left, right):
        assert (side.kind, side.status, [a.outcome for a in side.attempts]) == ("step", "completed", ["ok"])
        assert side.detail["planned_ms"] <= side.start_ms
    assert all(items[n].group is None for n in ("flaky", "nap", "approve", "never", "call"))

    approve = items["approve"]
    assert (approve.kind, approve.status) == ("wait", "completed")
    assert approve.detail["event"] == "timeline/approved" and "r-1" in approve.detail["if"]
    assert approve.detail["timeout_ms"] == 20_000 and approve.detail["matched_event_id"] == event_id
    assert "timed_out" not in approve.detail
    never = items["never"]
    assert (never.kind, never.status, never.detail["timed_out"], never.detail["if"]) == (
        "wait",
        "completed",
        True,
        None,
    )
    assert never.end_ms - never.start_ms >= 1000  # type: ignore[operator]

    call = items["call"]
    [child] = await runs_of(redis, "child")
    assert (call.kind, call.status, call.detail["child_run_id"]) == ("invoke", "completed", child.run_id)
    assert call.detail["function"] == "t-timeline-child" and call.memo_present
    # the history expires with the run, as its steps hash does
    assert 0 < await redis.ttl(keys.history(run_id)) <= await redis.ttl(keys.run(run_id))

    with ApiServer(REDIS_URL, settings=ApiSettings(event_keys=("ek",), signing_key=SIGNING_KEY)) as server:
        async with httpx.AsyncClient() as http:
            url = f"{server.url}/v0/runs/{run_id}/timeline"
            assert (await http.get(url)).status_code == 401
            auth = {"authorization": bearer(SIGNING_KEY)}
            served = await http.get(url, headers=auth)
            assert served.status_code == 200, served.text
            body = served.json()
            assert body["run"]["run_id"] == run_id and body["failed_at"] is None
            assert [i["name"] for i in body["items"]] == names
            assert body["items"][0]["attempts"][0]["error"]["name"] == "ConnectionError"
            missing = await http.get(f"{server.url}/v0/runs/01NOSUCHRUN/timeline", headers=auth)
            assert missing.status_code == 404


async def test_a_failed_run_says_which_step_and_attempt_raised_its_error(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("timeline")
    run_id = await start_run(sender, redis, "doomed", "timeline/doomed", {})
    declined = await start_run(sender, redis, "declined", "timeline/declined", {})
    view = await wait_for_run(redis, run_id)
    assert view.status == "failed"

    timeline = await get_timeline(redis, run_id)

    assert timeline is not None and timeline.failed_at is not None
    failed = timeline.failed_at
    assert (failed.key, failed.name, failed.attempt) == (hash_step_id("boom"), "boom", 2)
    assert failed.error["message"] == "boom on attempt 2"
    [boom] = timeline.items
    assert boom.status == "failed" and [(a.number, a.outcome) for a in boom.attempts] == [(1, "error"), (2, "error")]
    assert [a.error["message"] for a in boom.attempts if a.error] == ["boom on attempt 1", "boom on attempt 2"]
    assert timeline.to_dict()["failed_at"]["attempt"] == 2

    # a NonRetriableError raised in a step fails the run at once (retries=3): recorded against the step
    view = await wait_for_run(redis, declined)
    assert view.status == "failed" and view.error["message"] == "card declined on attempt 1"
    assert view.function_retries == 0
    fetch, charge = view.steps
    assert (fetch.name, fetch.done) == ("fetch", True)
    assert (charge.key, charge.name, charge.attempts, charge.executions, charge.done) == (
        hash_step_id("charge"),
        "charge",
        1,
        1,
        False,
    )
    assert charge.error == "NonRetriableError: card declined on attempt 1" and charge.finished_ms is not None
    timeline = await get_timeline(redis, declined)
    assert timeline is not None and timeline.failed_at is not None
    failed = timeline.failed_at
    assert (failed.key, failed.name, failed.attempt) == (hash_step_id("charge"), "charge", 1)
    assert [(i.name, i.status) for i in timeline.items] == [("fetch", "completed"), ("charge", "failed")]
    [attempt] = by_name(timeline)["charge"].attempts
    assert (attempt.number, attempt.outcome, attempt.error) == (
        1,
        "error",
        {"name": "NonRetriableError", "message": "card declined on attempt 1"},
    )
    assert attempt.started_ms is not None and attempt.ended_ms is not None


async def test_a_step_run_again_after_a_lost_lease_is_a_duplicate_attempt(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """Worker A runs the slow step and is paused past its lease; B runs it again and commits; A,
    resumed, reports its result, refused: the step shows one ok attempt and one duplicate."""
    [a, b] = start_workers("crash", n=2, env={"STEPQ_LEASE": "1"})
    marks = tmp_path / "marks.log"
    run_id = await start_run(sender, redis, "slow-async", "test/slow.async", {"log": str(marks), "first_s": 3})
    deadline = time.monotonic() + 15
    while not marks.exists() or not marks.read_text().strip():
        assert time.monotonic() < deadline, "the slow step never started"
        await asyncio.sleep(0.02)
    paused = a if a.pid == int(marks.read_text().split()[1]) else b
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        await wait_for_run(redis, run_id, timeout=30)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while not any("-refused:" in str(c.get("outcome")) for c in invocations(paused.logs(), run_id)):
        assert time.monotonic() < deadline, paused.stderr()[-3000:]
        await asyncio.sleep(0.05)

    timeline = await get_timeline(redis, run_id)

    assert timeline is not None
    [slow] = [item for item in timeline.items if item.name == "slow"]
    outcomes = sorted((a.outcome, a.number) for a in slow.attempts)
    assert outcomes == [("duplicate", 1), ("ok", 1)], slow.attempts
    [dup] = [a for a in slow.attempts if a.outcome == "duplicate"]
    assert dup.refusal in ("fenced", "done", "duplicate", "stale")
    [ok] = [a for a in slow.attempts if a.outcome == "ok"]
    assert dup.started_ms is not None and ok.started_ms is not None and dup.started_ms < ok.started_ms
    assert slow.status == "completed" and slow.end_ms == ok.ended_ms


async def test_the_history_keeps_its_newest_entries_and_expires_with_its_run(redis: Redis) -> None:
    store = RunStore(redis)
    run_id = "01HISTORYBOUND0000000000AB"
    await redis.hset(keys.run(run_id), mapping={"status": "running"})  # type: ignore[misc]
    for i in range(history.HISTORY_MAX + 5):
        assert await store.record_history(run_id, history.entry(history.K_INVOKE, key=f"k{i}"))
    raw = await redis.lrange(keys.history(run_id), 0, -1)  # type: ignore[misc]
    assert len(raw) == history.HISTORY_MAX
    first = history.decode(raw[0])
    assert first is not None and first.fields["key"] == "k5" and first.outcome == "ok"
    assert await redis.ttl(keys.history(run_id)) == -1  # a live run's history lives with it

    await redis.hset(keys.run(run_id), "status", "completed")  # type: ignore[misc]
    await redis.expire(keys.run(run_id), 100)
    assert await store.record_history(run_id, history.entry(history.K_INVOKE, key="late"))
    assert 0 < await redis.ttl(keys.history(run_id)) <= 100
    # a run that is gone records nothing (its list would never expire)
    assert not await store.record_history("01HISTORYGONE00000000000AB", history.entry(history.K_INVOKE, key="x"))
    assert not await redis.exists(keys.history("01HISTORYGONE00000000000AB"))


# -- build_timeline alone ---------------------------------------------------------------------------


def run_view(status: str = "running", **fields: Any) -> RunView:
    return RunView("01RUN", "app-fn", "app", status, 1_000, 1_010, None, None, **fields)


def e(outcome: str, at: int, kind: str, **fields: Any) -> HistoryEntry:
    """An entry as the scripts store it and ``history.decode`` reads it back."""
    import msgpack

    raw = msgpack.packb([outcome, at, msgpack.unpackb(history.entry(kind, **fields))])
    decoded = history.decode(raw)
    assert decoded is not None
    return decoded


def test_build_timeline_folds_attempts_groups_and_pending_steps() -> None:
    fan = {"key": "p1", "name": "left", "type": "step"}, {"key": "p2", "name": "right", "type": "step"}
    wait = {"key": "w", "name": "approve", "type": "wait", "event": "x/y", "if": None, "timeout_ms": 500}
    entries = [
        e(
            "ok",
            1_100,
            "retry",
            key="a",
            name="fetch",
            attempt=1,
            started_ms=1_050,
            error={"name": "E", "message": "m"},
            retry_at_ms=1_200,
            executed=True,
        ),
        e("ok", 1_250, "commit", key="a", name="fetch", attempt=2, started_ms=1_210),
        e("ok", 1_260, "fan_out", group=2, steps=list(fan), attempt=1, started_ms=1_255),
        e("ok", 1_300, "resolve", key="p2", name="right", attempt=1, started_ms=1_280),
        e("duplicate", 1_320, "resolve", key="p2", name="right", attempt=1, started_ms=1_270),
        e("joined", 1_330, "resolve", key="p1", name="left", attempt=1, started_ms=1_290),
        e("ok", 1_400, "fan_out", group=4, steps=[wait], attempt=1, started_ms=1_390),
        e("ok", 1_450, "event", key="w", event_id="ev1", event="x/y"),
        e("stale", 1_460, "timer", key="w"),  # the event won: a late timer changes nothing
        e("ok", 1_500, "sleep", key="s", name="nap", wake_at_ms=2_500, attempt=1, started_ms=1_495),
    ]
    run = run_view("sleeping", steps=[StepView("a", "fetch", 2, 2, 40, 1_250, "E: m", {"data": 1}, True)])

    timeline = build_timeline(run, entries)

    # by start: a step of a group starts when its first execution did
    assert [i.name for i in timeline.items] == ["fetch", "right", "left", "approve", "nap"]
    fetch, right, left, approve, nap = timeline.items
    assert (fetch.start_ms, fetch.end_ms, fetch.status, fetch.memo_present) == (1_050, 1_250, "completed", True)
    assert [(a.number, a.outcome) for a in fetch.attempts] == [(1, "error"), (2, "ok")]
    assert "retry_at_ms" not in fetch.detail
    assert left.group == right.group == "2" and left.detail["planned_ms"] == 1_260
    assert [(a.outcome, a.refusal) for a in right.attempts] == [("ok", None), ("duplicate", "duplicate")]
    assert (right.start_ms, right.end_ms) == (1_270, 1_300)  # its earliest execution started it
    assert approve.group is None and approve.detail["matched_event_id"] == "ev1" and approve.end_ms == 1_450
    assert "timed_out" not in approve.detail and approve.status == "completed"
    assert (nap.status, nap.end_ms, nap.detail["wake_at_ms"]) == ("sleeping", None, 2_500)
    assert not timeline.truncated and timeline.failed_at is None
    assert timeline.to_dict()["items"][1]["attempts"][1]["refusal"] == "duplicate"


def test_build_timeline_of_failed_and_cancelled_runs_and_flow_control() -> None:
    error = {"name": "ValueError", "message": "bad"}
    step_failed = [
        e("ok", 1_100, "commit", key="b", name="boom", attempt=3, started_ms=1_090, error=error),
        e("ok", 1_200, "finish", status="failed", attempt=1, started_ms=1_150, error=error),
    ]
    failed = build_timeline(run_view("failed", error={**error, "stack": "..."}), step_failed)
    assert failed.failed_at is not None
    assert (failed.failed_at.key, failed.failed_at.name, failed.failed_at.attempt) == ("b", "boom", 3)

    # the step's error was caught; the function's own code raised another one
    own = build_timeline(run_view("failed", error={"name": "KeyError", "message": "k"}), step_failed)
    assert own.failed_at is not None and (own.failed_at.key, own.failed_at.attempt) == (None, 1)

    function_retried = [
        e("ok", 1_100, "retry", key="", name="", attempt=1, started_ms=1_050, error=error, retry_at_ms=1_300),
    ]
    held = dict(held="throttled (key acme)", held_until_ms=1_005, waited="concurrency limit 1", held_ms=7)
    cancelled = build_timeline(run_view("cancelled", **held), [*function_retried, e("ok", 1_500, "cancel")])
    flow, body = cancelled.items
    assert (flow.kind, flow.start_ms, flow.end_ms, flow.status) == ("flow", 1_000, 1_010, "completed")
    assert flow.detail["held_ms"] == 7 and flow.detail["held"] == "throttled (key acme)"
    assert (body.kind, body.status, body.attempts[0].outcome) == ("function", "cancelled", "error")

    # entries the bound dropped: the steps hash still knows the step
    trimmed = build_timeline(run_view(steps=[StepView("z", "old", 1, 1, 30, 1_040, None, {"data": 0}, True)]), [])
    [old] = trimmed.items
    assert (old.name, old.start_ms, old.end_ms, old.status, old.memo_present) == (
        "old",
        1_010,
        1_040,
        "completed",
        True,
    )
    assert [(a.number, a.outcome) for a in old.attempts] == [(1, "ok")]  # its last attempt, as `stepq run` has it

    # a resumed run's kept steps ran in the run it was forked from: their last attempt, and where
    kept = StepView("k", "flaky", 2, 2, 4, 1_030, "ConnectionError: down", {"data": 1}, True)
    nap = StepView("n", "nap", 1, 0, None, 1_035, None, None, True)
    resumed = build_timeline(run_view(steps=[kept, nap], forked_from="01OLD", from_step="x"), [])
    flaky, slept = resumed.items
    assert [(a.number, a.outcome) for a in flaky.attempts] == [(2, "ok")] and not slept.attempts
    assert flaky.detail["kept_from"] == slept.detail["kept_from"] == "01OLD"


def test_build_timeline_of_invokes_and_a_child_that_failed_or_never_answered() -> None:
    calls = [
        {"key": "c1", "name": "charge", "type": "invoke", "function": "app-pay", "timeout_ms": 5_000},
        {"key": "c2", "name": "notify", "type": "invoke", "function": "app-mail", "timeout_ms": 1_000},
    ]
    entries = [
        e("ok", 1_100, "fan_out", group=3, steps=calls, attempt=1, started_ms=1_090),
        e("ok", 1_120, "child", key="c1", child_run_id="01CHILD1", error={"name": "E", "message": "declined"}),
        e("ok", 1_130, "invoke", key="c1", child_run_id="01CHILD1", function="app-pay", created=True),
        e("ok", 1_140, "invoke", key="c2", child_run_id="01CHILD2", function="app-mail", created=True),
        e("ok", 2_100, "timer", key="c2"),
        e("done", 2_200, "child", key="c2", child_run_id="01CHILD2"),  # too late: the parent moved on
    ]
    charge, notify = build_timeline(run_view(), entries).items
    assert (charge.kind, charge.group, charge.status, charge.end_ms) == ("invoke", "3", "failed", 1_120)
    assert charge.detail["child_run_id"] == "01CHILD1" and charge.detail["error"]["message"] == "declined"
    assert (notify.status, notify.end_ms, notify.detail["timed_out"]) == ("failed", 2_100, True)
    assert notify.detail["child_run_id"] == "01CHILD2" and notify.detail["function"] == "app-mail"
