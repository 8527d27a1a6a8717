"""Issue 2.6: bad events are refused whole, bad step outputs fail clearly, stray jobs are dropped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.queries import get_run, list_runs
from stepq.runtime.registry import Registry
from tests.apps import bad
from tests.helpers import StartWorkers, WorkerProcess, start_run, wait_for_empty_queue, wait_for_run

APP = "t-bad"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"data": {"a": 1}}, "event.name"),
        (stepq.Event(name=""), "event.name"),
        (stepq.Event(name="   ", data={"a": 1}), "event.name"),
    ],
    ids=["missing", "empty", "blank"],
)
async def test_event_without_a_name_is_refused_and_nothing_is_stored(
    redis: Redis, sender: stepq.Client, event: Any, field: str
) -> None:
    with pytest.raises(stepq.InvalidEventError) as refused:
        await sender.send(event)
    assert field in str(refused.value)
    assert await redis.dbsize() == 0


@pytest.mark.parametrize(
    ("data", "where", "kind"),
    [
        ({"tags": {"a", "b"}}, "event.data.tags", "set"),
        ({"owner": object()}, "event.data.owner", "object"),
        ({"items": [1, {"nested": {2}}]}, "event.data.items[1].nested", "set"),
    ],
    ids=["set", "object", "nested-set"],
)
async def test_event_with_non_json_data_is_refused_and_nothing_is_stored(
    redis: Redis, sender: stepq.Client, data: dict[str, Any], where: str, kind: str
) -> None:
    with pytest.raises(stepq.InvalidEventError) as refused:
        await sender.send(stepq.Event(name="test/echo", data=data))
    assert where in str(refused.value)
    assert kind in str(refused.value)
    assert await redis.dbsize() == 0


async def test_a_bad_event_in_a_batch_refuses_the_whole_batch(redis: Redis, sender: stepq.Client) -> None:
    good = stepq.Event(name="test/echo", data={"text": "fine"})
    with pytest.raises(stepq.InvalidEventError) as refused:
        await sender.send([good, stepq.Event(name="test/echo", data={"when": {1}})])
    assert "events[1].data.when" in str(refused.value)
    assert await redis.dbsize() == 0


@pytest.mark.parametrize(
    ("function", "event", "step", "kind"),
    [
        ("returns-set", "test/returns-set", "make-set", "set"),
        ("returns-object", "test/returns-object", "make-object", "object"),
    ],
)
async def test_step_returning_a_non_json_value_fails_the_run_naming_the_step_and_type(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, function: str, event: str, step: str, kind: str
) -> None:
    start_workers("bad")
    run_id = await start_run(sender, redis, function, event, {})

    view = await wait_for_run(redis, run_id)

    assert view.status == "failed"
    message = view.error["message"]
    assert repr(step) in message
    assert f"{kind} is not JSON-compatible" in message
    [failed] = view.steps
    assert failed.attempts == 1


async def test_step_output_over_the_limit_fails_the_run_clearly(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("bad", env={"STEPQ_MAX_OUTPUT_BYTES": "1024"})
    run_id = await start_run(sender, redis, "big-output", "test/big-output", {})

    view = await wait_for_run(redis, run_id)

    assert view.status == "failed"
    message = view.error["message"]
    assert "'make-big'" in message
    assert "1024 bytes" in message
    # A step within the limit still works in that worker.
    ok = await wait_for_run(redis, await start_run(sender, redis, "echo", "test/echo", {"text": "hi"}))
    assert (ok.status, ok.output) == ("completed", {"said": "hi"})


async def test_event_no_function_listens_to_is_stored_and_starts_nothing(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("bad")
    [event_id] = await sender.send(stepq.Event(name="test/nobody-listens", data={"x": 1}))

    assert await redis.exists(keys.event(event_id)) == 1
    assert await list_runs(redis) == []
    assert await redis.zcard(keys.runs_active(0)) == 0
    assert await redis.zcard(keys.queue(0, APP)) == 0
    assert [k async for k in redis.scan_iter(match="stepq:{*}:run:*")] == []


async def wait_for_log(worker: WorkerProcess, predicate: Any, timeout: float = 10.0) -> dict[str, Any] | str:
    """The first log line (parsed JSON, else raw text) that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in worker.logs():
            if predicate(entry):
                return entry
        for line in worker.stderr().splitlines():
            if not line.startswith("{") and predicate(line):
                return line
        await asyncio.sleep(0.02)
    raise AssertionError(f"no such log line within {timeout} s:\n{worker.stderr()}")


async def test_raw_job_naming_an_unknown_function_is_dropped_with_an_error_log(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("bad")
    now = int(time.time() * 1000)
    await redis.set(keys.job("stray-0"), msgpack.packb({"t": 1, "f": "nope", "a": [], "k": {}, "et": now}))
    await redis.zadd(keys.queue(0, APP), {"stray-0": now})

    logged = await wait_for_log(worker, lambda e: "'nope'" in str(e) and "not found" in str(e))
    # The worker goes on: the stray job is gone and other runs complete normally.
    echo_run = await start_run(sender, redis, "echo", "test/echo", {"text": "still here"})
    view = await wait_for_run(redis, echo_run)
    assert (view.status, view.output) == ("completed", {"said": "still here"})
    assert worker.alive()
    await wait_for_empty_queue(redis, APP)
    assert await redis.exists(keys.job("stray-0")) == 0
    # Logged as the worker logs everything else: a JSON line, at error level.
    assert isinstance(logged, dict), f"not a structured log line: {logged!r}"
    assert logged["level"] == "error", logged


async def test_job_for_a_function_the_worker_does_not_serve_is_dropped_with_an_error_log(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("bad")
    # A newer deploy of the app added "ghost"; this worker runs the older code.
    newer = stepq.Client(APP)

    @newer.create_function(id="ghost", trigger=stepq.TriggerEvent(event="test/ghost"))
    async def ghost(ctx: stepq.Context) -> None:
        pass

    await Registry(redis).register_app(APP, [fn.config() for fn in [*bad.client.functions.values(), ghost]])
    ghost_run = await start_run(sender, redis, "ghost", "test/ghost", {})

    logged = await wait_for_log(worker, lambda e: isinstance(e, dict) and e.get("run_id") == ghost_run)
    assert isinstance(logged, dict)
    assert logged["level"] == "error"
    assert f"{APP}-ghost" in str(logged)
    echo_run = await start_run(sender, redis, "echo", "test/echo", {"text": "still here"})
    view = await wait_for_run(redis, echo_run)
    assert (view.status, view.output) == ("completed", {"said": "still here"})
    assert worker.alive()
    await wait_for_empty_queue(redis, APP)
    print(f"the unserved run after its job was dropped: {await get_run(redis, ghost_run, with_steps=False)}")


def test_digits_that_int_refuses_are_refused_as_malformed_not_raised() -> None:
    """'²' passes str.isdigit() and int() refuses it (ARABIC-INDIC ONE passes both). Numbers read
    from headers and query text must be ASCII digits: a served app's Retry-After, a signature's
    timestamp, a page cursor."""
    from stepq.runtime.run_index import decode_cursor
    from stepq.signing import SignatureError, parse_header
    from stepq.workers.http_invoker import _retry_after

    assert _retry_after("²") is None and _retry_after("\u0661") is None
    with pytest.raises(SignatureError):
        parse_header("t=²&s=" + "a" * 64)
    for cursor in ("²²².01M8P1AH0EB3Q4KYRJTH7BAWH0", "\u0661.abc"):
        with pytest.raises(ValueError, match=r"^cursor: "):
            decode_cursor(cursor)
