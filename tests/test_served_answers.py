"""Every run ends, with functions served over HTTP: issue 8's items 1, 2, 4, 5 and 16 there.

One stack for the module: ``stepq api`` (with a 256 KiB output limit), ``stepq worker --http``, the
step-engine apps behind ``stepq.serve`` (``tests/apps/served.py``; the parallel app is synced) and
``tests/apps/liar_http.py``, whose answers do not fit what it was asked.

- Twenty 20-step fan-outs at once over HTTP all complete.
- An answer that reports a memoized step again fails the attempt with an error naming the step; the
  run fails once the attempts are spent (never ``running`` with nothing queued).
- A planned step's call answered with another step's result is refused, naming both ids; the
  other step's value stays the one its own call returned.
- A served step's output over the limit fails that step (a StepError), as in-process.
- Malformed opcodes fail the run at once (one call), naming what the app sent wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from stepq.runtime.codec import unpack
from stepq.runtime.queries import RunView, get_run
from tests.apps.liar_http import APP_ID, BEHAVIOURS, MALFORMED, key
from tests.helpers import run_ids_for_event, run_memo, run_stack, wait_for_run, wait_for_runs
from tests.http_fixtures import (
    Service,
    Stack,
    flush_test_db,
    register_payload,
    served_function,
    start_api,
    start_asgi_app,
    start_http_worker,
)

#: Attempts per liar function: one retry, quickly.
RETRIES = 1
FAST_BACKOFF = {"initial": 0.05, "factor": 1.0, "jitter": 0.0}
MAX_OUTPUT = 256 * 1024


def fn(name: str) -> str:
    return f"{APP_ID}-{name}"


def liar_payload(app_url: str) -> dict[str, Any]:
    functions = [
        served_function(APP_ID, name, app_url, event=f"liar/{name}", retries=RETRIES, backoff=FAST_BACKOFF)
        for name in BEHAVIOURS
    ]
    return register_payload(app_url, APP_ID, functions)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    flush_test_db()
    directory = tmp_path_factory.mktemp("served-answers")
    started: list[Service] = []
    try:
        # Served functions live within the limits of the API that registers them.
        api = start_api(directory, env={"STEPQ_MAX_OUTPUT_BYTES": str(MAX_OUTPUT)})
        started.append(api)
        worker = start_http_worker(directory)
        started.append(worker)
        liar = start_asgi_app("tests.apps.liar_http:app", directory, name="liar")
        started.append(liar)
        served = start_asgi_app(
            "tests.apps.served:app",
            directory,
            env={"INNGEST_DEV": "1", "INNGEST_BASE_URL": str(api.url)},  # type: ignore[attr-defined]
            path="/parallel/api/inngest",
            name="served",
        )
        started.append(served)
        stack = Stack(api, worker, liar, directory)
        registered = httpx.post(f"{stack.api_url}/fn/register", json=liar_payload(str(liar.url)), timeout=30)  # type: ignore[attr-defined]
        assert registered.status_code == 200, registered.text
        synced = httpx.put(str(served.url), timeout=30)  # type: ignore[attr-defined]
        assert synced.status_code == 200, synced.text
        yield stack
    finally:
        for service in reversed(started):
            service.stop()


async def send(stack: Stack, events: list[dict[str, Any]]) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{stack.api_url}/e/key", json=events)
    assert response.status_code == 200, response.text
    ids: list[str] = response.json()["ids"]
    return ids


async def start(stack: Stack, db: Redis, name: str, data: dict[str, Any] | None = None) -> str:
    [event_id] = await send(stack, [{"name": f"liar/{name}", "data": data or {}}])
    [run_id] = await run_ids_for_event(db, fn(name), event_id)
    return run_id


async def ended(db: Redis, run_id: str, stack: Stack) -> RunView:
    try:
        return await wait_for_run(db, run_id, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.output()}") from None


async def calls(stack: Stack, name: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{stack.app.origin}/calls", params={"fn": name})  # type: ignore[attr-defined]
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


async def test_twenty_served_fan_outs_at_once_all_complete(stack: Stack, db: Redis) -> None:
    event_ids = await send(stack, [{"name": "test/fan.fast", "data": {"n": 20}} for _ in range(20)])
    run_ids = [r for e in event_ids for r in await run_ids_for_event(db, "fan-fast", e)]
    assert len(run_ids) == 20

    try:
        await wait_for_runs(db, run_ids, timeout=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.output()}") from None
    for run_id in run_ids:
        view = await get_run(db, run_id)
        assert view is not None and view.status == "completed", (view and view.status, view and view.error)
        assert view.output == [i * i for i in range(20)]
        assert len(set(await run_stack(db, run_id))) == 20


async def test_an_answer_repeating_a_memoized_step_fails_the_attempt_and_then_the_run(stack: Stack, db: Redis) -> None:
    run_id = await start(stack, db, "again")

    view = await ended(db, run_id, stack)

    assert view.status == "failed"
    assert view.error["name"] == "InvalidAnswer", view.error
    assert "'a'" in view.error["message"] and "already memoized" in view.error["message"], view.error
    received = await calls(stack, "again")
    assert len(received) == 1 + RETRIES + 1  # the first answer, then one per attempt of the next call
    assert list((await run_memo(db, run_id)).keys()) == [key("a")]


async def test_a_planned_steps_call_answered_with_another_steps_result_is_refused(stack: Stack, db: Redis) -> None:
    run_id = await start(stack, db, "forge")

    view = await ended(db, run_id, stack)

    assert view.status == "failed", view.output
    assert view.error["name"] == "InvalidAnswer", view.error
    assert key("x") in view.error["message"] and key("y") in view.error["message"], view.error
    memo = {k: unpack(v) for k, v in (await run_memo(db, run_id)).items()}
    assert key("x") not in memo
    assert memo.get(key("y"), {"data": "honest"}) == {"data": "honest"}, memo


async def test_a_served_step_output_over_the_limit_fails_the_step(stack: Stack, db: Redis) -> None:
    run_id = await start(stack, db, "big", {"bytes": MAX_OUTPUT + 10_000})

    view = await ended(db, run_id, stack)

    assert view.status == "failed"
    memo = unpack((await run_memo(db, run_id))[key("a")])
    assert memo["error"]["name"] == "OutputTooLarge", memo
    assert "STEPQ_MAX_OUTPUT_BYTES" in memo["error"]["message"], memo
    assert f"{MAX_OUTPUT} bytes" in view.error["message"], view.error


#: What each malformed answer's error must mention.
NAMED = {
    "sleep-huge": "99999999999999d",
    "sleep-garbage": "soon",
    "sleep-year": "400d",
    "sleep-date": "2026-13-45",
    "wait-timeout": "opts.timeout",
    "wait-if": "opts.if",
    "wait-event": "opts.event",
    "invoke-function": "opts.function_id",
    "invoke-timeout": "opts.timeout",
    "data-nan": "nan",
    "data-hugeint": "64 bits",
    "data-deep": "nested too deeply",
    "error-shape": "error",
    "retries-bad": "opts.retries",
    "opts-list": "opts must be an object",
    "planned-twice": "appears twice",
    "mixed": "must be the only opcode",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_a_malformed_opcode_fails_the_run_at_once_naming_what_was_wrong(
    stack: Stack, db: Redis, name: str
) -> None:
    run_id = await start(stack, db, name)

    view = await ended(db, run_id, stack)

    assert view.status == "failed"
    retried = name == "planned-twice"  # a repeated step is a wrong answer: retried like one
    assert view.error["name"] == ("InvalidAnswer" if retried else "InvalidOpcode"), view.error
    assert NAMED[name] in view.error["message"], view.error
    assert len(await calls(stack, name)) == (1 + RETRIES if retried else 1)
    assert await run_stack(db, run_id) == []
    assert stack.worker.alive()
