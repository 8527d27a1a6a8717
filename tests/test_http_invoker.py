"""Bad answers from an app serving functions over HTTP, and what ``stepq worker --http`` makes of them.

``tests/apps/bad_http.py`` (Starlette under uvicorn) is registered by hand with ``POST /fn/register``
and answers badly on purpose: not JSON, a wrong status with or without the SDK header, a 2xx
without it, a hang past the worker's step timeout (``STEPQ_STEP_TIMEOUT=3``), a body over 8 MiB,
``Retry-After``, ``X-Inngest-No-Retry``. Each run must retry or fail with an error that says what
went wrong, and the worker must keep serving well-behaved functions.

Also: ``POST /fn/register`` refuses invalid configs with a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from stepq.runtime.queries import RunView, get_run
from stepq.runtime.registry import Registry
from stepq.runtime.timeline import get_timeline
from tests.apps.bad_http import APP_ID, BEHAVIOURS, STEP_KEY
from tests.helpers import run_ids_for_event, wait_for_run
from tests.http_fixtures import (
    Stack,
    register_payload,
    served_function,
    start_stack,
    stepq_cli,
)

STEP_TIMEOUT_S = 3
#: Retries by function (the rest have 1: two attempts). A fast backoff keeps the module short and
#: makes a honoured Retry-After stand out from the backoff.
RETRIES = {"noretry": 3, "stepnoretry": 3, "big": 2}
FAST_BACKOFF = {"initial": 0.05, "factor": 1.0, "jitter": 0.0}


def fn(name: str) -> str:
    return f"{APP_ID}-{name}"


def bad_payload(app_url: str) -> dict[str, Any]:
    functions = [
        served_function(APP_ID, name, app_url, event=f"bad/{name}", retries=RETRIES.get(name, 1), backoff=FAST_BACKOFF)
        for name in BEHAVIOURS
    ]
    return register_payload(app_url, APP_ID, functions)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("http-invoker")
    worker_env = {"STEPQ_STEP_TIMEOUT": str(STEP_TIMEOUT_S)}
    stack = start_stack(directory, "tests.apps.bad_http:app", worker_env=worker_env)
    try:
        response = httpx.post(f"{stack.api_url}/fn/register", json=bad_payload(str(stack.app.url)), timeout=30)  # type: ignore[attr-defined]
        assert response.status_code == 200, response.text
        assert response.json()["ok"] is True
        yield stack
    finally:
        stack.stop()


async def start(stack: Stack, db: Redis, name: str, data: dict[str, Any] | None = None) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{stack.api_url}/e/key", json={"name": f"bad/{name}", "data": data or {}})
    assert response.status_code == 200, response.text
    [event_id] = response.json()["ids"]
    run_ids = await run_ids_for_event(db, fn(name), event_id)
    assert len(run_ids) == 1, f"bad/{name} started {run_ids}"
    return run_ids[0]


async def finished(db: Redis, run_id: str, stack: Stack, timeout: float = 60.0) -> RunView:
    try:
        return await wait_for_run(db, run_id, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.output()}") from None


async def calls(stack: Stack, name: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{stack.app.origin}/calls", params={"fn": name})  # type: ignore[attr-defined]
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


def error_text(view: RunView) -> str:
    assert isinstance(view.error, dict), view.error
    return f"{view.error.get('name')}: {view.error.get('message')}"


async def assert_fails_after_retry(stack: Stack, db: Redis, name: str) -> RunView:
    """Run ``name``: its one retry happens (two calls, the second with ``ctx.attempt`` 1), then it fails."""
    run_id = await start(stack, db, name)
    view = await finished(db, run_id, stack)
    assert view.status == "failed", view
    received = await calls(stack, name)
    assert [c["attempt"] for c in received] == [0, 1], received
    shown = stepq_cli("run", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "status    failed" in shown.stdout
    assert view.error["message"] in shown.stdout, shown.stdout
    assert stack.worker.alive()
    return view


# --------------------------------------------------------------------------------------------------
# Bad answers
# --------------------------------------------------------------------------------------------------


async def test_a_body_that_is_not_json_is_retried_then_fails_naming_the_problem(stack: Stack, db: Redis) -> None:
    view = await assert_fails_after_retry(stack, db, "notjson")
    assert view.error["name"] == "InvalidResponse"
    assert "not JSON" in view.error["message"] and "Internal proxy page" in view.error["message"], view.error


async def test_a_404_without_the_sdk_header_is_retried_then_fails(stack: Stack, db: Redis) -> None:
    view = await assert_fails_after_retry(stack, db, "notfound")
    assert "404" in view.error["message"] and "Not Found" in view.error["message"], view.error


async def test_a_418_from_the_sdk_carries_its_error_and_is_retried(stack: Stack, db: Redis) -> None:
    view = await assert_fails_after_retry(stack, db, "teapot")
    assert error_text(view) == "Teapot: I am a teapot"


async def test_a_2xx_without_the_sdk_header_is_not_taken_as_the_output(stack: Stack, db: Redis) -> None:
    view = await assert_fails_after_retry(stack, db, "nosdk")
    assert view.output is None
    assert view.error["name"] == "NotAnSDKResponse"
    assert "X-Inngest-SDK" in view.error["message"], view.error


async def test_a_hang_past_the_step_timeout_is_given_up_and_other_runs_go_on(stack: Stack, db: Redis) -> None:
    hung = await start(stack, db, "hang")
    # While the first attempt hangs, the worker serves other runs.
    good = await finished(db, await start(stack, db, "good", {"n": 1}), stack)
    assert good.status == "completed" and good.output == {"work": {"n": 1}}
    # Two attempts of 3 s and a 0.05 s backoff: 30 s is plenty.
    view = await finished(db, hung, stack, timeout=30)

    assert view.status == "failed", view
    assert re.search(r"time ?out|timed out|no answer", error_text(view), re.IGNORECASE), view.error
    received = await calls(stack, "hang")
    assert [c["attempt"] for c in received] == [0, 1], received
    assert received[1]["at"] - received[0]["at"] >= STEP_TIMEOUT_S
    assert stack.worker.alive()


async def test_a_body_over_8_mib_fails_the_run_with_a_clear_error(stack: Stack, db: Redis) -> None:
    run_id = await start(stack, db, "big")
    view = await finished(db, run_id, stack)

    assert view.status == "failed", view
    assert view.error["name"] == "OutputTooLarge", view.error
    assert str(8 * 1024 * 1024) in view.error["message"], view.error
    assert stack.worker.alive()


async def test_retry_after_is_honoured_and_clamped_to_at_least_one_second(stack: Stack, db: Redis) -> None:
    """Without Retry-After these functions would be retried after 0.05 s (their backoff)."""
    names = ["retryafter3", "retryafter0", "retryafterpast"]
    run_ids = [await start(stack, db, name) for name in names]
    for name, run_id in zip(names, run_ids, strict=True):
        view = await finished(db, run_id, stack)
        assert view.status == "completed", (name, view.error)
        assert view.output == "done"
    gaps = {}
    for name in names:
        received = await calls(stack, name)
        assert [c["attempt"] for c in received] == [0, 1], (name, received)
        gaps[name] = received[1]["at"] - received[0]["at"]
    assert gaps["retryafter3"] >= 3.0, gaps
    assert gaps["retryafter0"] >= 1.0, gaps  # "Retry-After: 0" is clamped to 1 s
    assert gaps["retryafterpast"] >= 1.0, gaps  # so is a date in the past


async def test_x_inngest_no_retry_fails_the_run_at_once(stack: Stack, db: Redis) -> None:
    run_id = await start(stack, db, "noretry")
    view = await finished(db, run_id, stack)

    assert view.status == "failed", view
    assert error_text(view) == "Fatal: do not retry this"
    assert len(await calls(stack, "noretry")) == 1, "retries 3, but the app said not to retry"


async def wait_terminal_or_calls(db: Redis, run_id: str, stack: Stack, name: str, most: int) -> list[dict[str, Any]]:
    """Wait until the run ends, or the app has seen more than ``most`` calls of the step (the step
    is being retried past what it should be): either way, return the calls that ran the step."""
    deadline = time.monotonic() + 60
    while True:
        view = await get_run(db, run_id, with_steps=False)
        step_calls = [c for c in await calls(stack, name) if STEP_KEY not in c["memo"]]
        if (view is not None and view.status in ("completed", "failed", "cancelled")) or len(step_calls) > most:
            return step_calls
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not end: {view}\n{stack.output()}")
        await asyncio.sleep(0.05)


async def test_x_inngest_no_retry_on_a_step_error_fails_the_step_at_once(stack: Stack, db: Redis) -> None:
    """A 206 ``StepError`` with ``X-Inngest-No-Retry: true``: the step is not retried; its error is
    memoized, and the app's next answer (an uncaught StepError) fails the run."""
    run_id = await start(stack, db, "stepnoretry")
    step_calls = await wait_terminal_or_calls(db, run_id, stack, "stepnoretry", most=1)

    assert len(step_calls) == 1, f"the step was run {len(step_calls)} times despite X-Inngest-No-Retry"
    view = await finished(db, run_id, stack)
    assert view.status == "failed", view
    assert "the step failed" in view.error["message"], view.error
    # the step failed for good at its first attempt, recorded against it
    [step] = view.steps
    assert (step.key, step.attempts, step.done) == (STEP_KEY, 1, True)
    assert step.memo["error"]["message"] == "the step failed", step.memo
    timeline = await get_timeline(db, run_id)
    assert timeline is not None
    [item] = [i for i in timeline.items if i.key == STEP_KEY]
    assert (item.status, [(a.number, a.outcome) for a in item.attempts]) == ("failed", [(1, "error")])


async def test_step_errors_stop_at_the_functions_retries(stack: Stack, db: Redis) -> None:
    """An SDK that keeps answering ``StepError`` (never ``StepFailed``) is not retried forever: after
    retries + 1 attempts the step fails, as Inngest's executor decides on its own."""
    run_id = await start(stack, db, "steperror")
    step_calls = await wait_terminal_or_calls(db, run_id, stack, "steperror", most=2)

    assert [c["attempt"] for c in step_calls] == [0, 1], f"retries=1, but the step ran {len(step_calls)} times"
    view = await finished(db, run_id, stack)
    assert view.status == "failed", view
    assert "the step failed" in view.error["message"], view.error
    shown = stepq_cli("run", run_id)
    assert "FlakyError: the step failed" in shown.stdout, shown.stdout


async def test_the_worker_is_healthy_after_all_that(stack: Stack, db: Redis) -> None:
    view = await finished(db, await start(stack, db, "good", {"n": 42}), stack)
    assert view.status == "completed", view.error
    assert view.output == {"work": {"n": 42}}
    [step] = view.steps
    assert step.key == STEP_KEY and step.name == "work" and step.memo == {"data": {"n": 42}}
    assert stack.worker.alive()
    internal = [e for e in stack.worker.logs() if e.get("event") in ("job.internal_error", "job.malformed")]
    assert internal == [], internal


# --------------------------------------------------------------------------------------------------
# Register refuses invalid configs
# --------------------------------------------------------------------------------------------------


def one_function(**changes: Any) -> dict[str, Any]:
    function: dict[str, Any] = {
        "id": "invalid-f",
        "name": "f",
        "triggers": [{"event": "invalid/go"}],
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": "http://127.0.0.1:9/api/inngest?fnId=invalid-f&stepId=step"},
                "retries": {"attempts": 2},
            }
        },
    }
    for path, value in changes.items():
        target = function
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return function


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps__step__runtime__url": None}, "functions[0].steps.step.runtime.url"),
        ({"steps__step__runtime__url": "ftp://example.com/x"}, "functions[0].steps.step.runtime.url"),
        ({"steps__step__retries__attempts": 21}, "functions[0].steps.step.retries.attempts"),
        ({"steps__step__retries__attempts": "three"}, "functions[0].steps.step.retries.attempts"),
        ({"steps__step__retries__attempts": -1}, "functions[0].steps.step.retries.attempts"),
        ({"triggers": [{"cron": "every tuesday"}]}, "functions[0].triggers[0].cron"),
        (
            {"triggers": [{"event": "invalid/go", "expression": "event.data.x =="}]},
            "functions[0].triggers[0].expression",
        ),
        ({"cancel": [{"event": "invalid/stop", "if": "async.data.x == ("}]}, "functions[0].cancel[0].if"),
        ({"id": None}, "functions[0].id"),
    ],
    ids=[
        "no-url",
        "not-http-url",
        "retries-21",
        "retries-text",
        "retries-negative",
        "bad-cron",
        "bad-expression",
        "bad-cancel-if",
        "no-id",
    ],
)
async def test_register_refuses_an_invalid_config_naming_the_field(
    stack: Stack, db: Redis, changes: dict[str, Any], field: str
) -> None:
    payload = register_payload("http://127.0.0.1:9/api/inngest", "invalid", [one_function(**changes)])
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{stack.api_url}/fn/register", json=payload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body.get("ok") is False
    assert field in body["error"], f"the error should name {field}: {body['error']}"
    assert "invalid-f" not in {r.slug for r in await Registry(db).functions()}
