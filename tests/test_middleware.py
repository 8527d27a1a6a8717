"""Middleware: inngest-py's hooks in inngest-py's order, wherever stepq runs a function.

The functions of ``tests/apps/mw_hooks.py`` run in a worker process (the in-process path) and in an
app served over HTTP (``stepq.serve``, driven by ``stepq worker --http``); their middleware writes
each hook call to a file, which the tests read back. Sends are tested in this process, against the
test database.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

import stepq
from stepq.engine import StepsReported
from stepq.invocation import invoke
from stepq.middleware import Middleware, MiddlewareSync
from stepq.middleware_manager import MiddlewareError
from stepq.replay import ExecutionRequest
from stepq.runtime import keys
from stepq.runtime.codec import unpack
from tests.apps import mw_hooks
from tests.helpers import REDIS_URL, StartWorkers, run_ids_for_event, run_memo, sha1, start_run, wait_for_run
from tests.http_fixtures import Stack, start_stack, synced

#: The order middleware runs in: the client's (as listed), then the function's.
CHAIN = ["client-sync", "client-async", "fn-async", "fn-sync"]

Call = tuple[str, str]


def each(hook: str, *, last_first: bool = False) -> list[Call]:
    """One hook on every middleware: in list order, or last first (inngest-py 0.5's "after" hooks)."""
    return [(label, hook) for label in (reversed(CHAIN) if last_first else CHAIN)]


def invocation(new_code: list[Call] | None = None) -> list[Call]:
    """The calls one invocation makes; ``new_code`` is what the function's new code triggers."""
    return [
        *each("transform_input"),
        *each("before_memoization"),
        *each("after_memoization", last_first=True),
        *each("before_execution"),
        *(new_code or []),
        *each("after_execution", last_first=True),
        *each("transform_output", last_first=True),
        *each("before_response"),
    ]


#: A function that runs step "a", then step.send_event "send", then returns: three invocations.
EXPECTED = [
    *invocation(),
    *invocation([*each("before_send_events"), *each("after_send_events", last_first=True)]),
    *invocation(),
]


def read_log(path: Path, run_id: str | None) -> list[list[Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line[0] == run_id]


def details(lines: list[list[Any]], hook: str, label: str) -> list[str]:
    return [detail for _, who, what, detail in lines if what == hook and who == label]


async def logged_run(path: Path, run_id: str, count: int) -> list[list[Any]]:
    """The run's log lines, once the last invocation's ``before_response`` calls are written."""
    deadline = time.monotonic() + 10
    while True:
        lines = read_log(path, run_id)
        if sum(1 for line in lines if line[2] == "before_response") >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.02)


def check_hooks(lines: list[list[Any]], context: str, function: str, raw: str) -> None:
    assert [(who, what) for _, who, what, _ in lines] == EXPECTED
    for label in CHAIN:
        assert details(lines, "transform_input", label) == [
            f"{context} {function} steps={n} raw={raw}" for n in (0, 1, 2)
        ]
        outputs = details(lines, "transform_output", label)
        assert outputs[0] == "a/StepRun output=1 error=-"
        assert outputs[1].startswith('send/StepRun output=["') and outputs[1].endswith('"] error=-')
        assert outputs[2] == 'function output={"a": 1} error=-'
        assert details(lines, "before_send_events", label) == ["mw/nobody-listens"]
        assert details(lines, "after_send_events", label) == ["ids=1"]


# -- in a worker -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("function", "context"), [("hooks-async", "Context"), ("hooks-sync", "ContextSync")])
async def test_a_worker_calls_every_hook_in_inngests_order(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, function: str, context: str
) -> None:
    log = tmp_path / "hooks.jsonl"
    start_workers("mw_hooks", env={mw_hooks.LOG_ENV: str(log)})
    run_id = await start_run(sender, redis, function, f"mw/{function}", {})
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view.error
    assert view.output == {"a": 1}
    check_hooks(await logged_run(log, run_id, 3 * len(CHAIN)), context, function, raw="NoneType")


async def test_transform_output_and_transform_input_round_trip(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("mw_hooks")
    run_id = await start_run(sender, redis, "roundtrip", "mw/roundtrip", {})
    view = await wait_for_run(redis, run_id)
    # The function computed 20 + 21 from its memoized steps: transform_input unwrapped them.
    assert view.status == "completed", view.error
    assert view.output == {"wrapped": 41}
    memo = {key: unpack(value) for key, value in (await run_memo(redis, run_id)).items()}
    assert memo == {sha1("a"): {"data": {"wrapped": 20}}, sha1("b"): {"data": {"wrapped": 21}}}


async def test_an_error_in_a_hook_fails_the_invocation_like_the_functions_own(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    log = tmp_path / "hooks.jsonl"
    start_workers("mw_hooks", env={mw_hooks.LOG_ENV: str(log)})
    run_id = await start_run(sender, redis, "refused", "mw/refused", {})
    view = await wait_for_run(redis, run_id)
    assert view.status == "failed"
    assert view.error["name"] == "NonRetriableError"
    assert view.error["message"] == "refused by middleware"
    # The first invocation ran the step; the second failed when its replay ended, inside the
    # function's try/except, which could not catch the hook's error.
    assert list(await run_memo(redis, run_id)) == [sha1("first")]
    lines = await logged_run(log, run_id, 2 * len(CHAIN[:2]))
    # The function did not go on, so after_execution was not called; transform_output saw the error.
    assert [what for _, who, what, _ in lines if who == "client-sync"][-3:] == [
        "before_execution",
        "transform_output",
        "before_response",
    ]
    outputs = details(lines, "transform_output", "client-sync")
    assert outputs == ['first/StepRun output="ran" error=-', "function output=- error=NonRetriableError"]


# -- served over HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    directory = tmp_path_factory.mktemp("mw-served")
    log = directory / "hooks.jsonl"
    app_env = {"INNGEST_DEV": "1", mw_hooks.LOG_ENV: str(log)}
    with synced(start_stack(directory, "tests.apps.mw_served:app", app_env=app_env)) as stack:
        yield stack, log


@pytest.mark.parametrize(("function", "context"), [("hooks-async", "Context"), ("hooks-sync", "ContextSync")])
async def test_a_served_app_calls_every_hook_in_inngests_order(
    served: tuple[Stack, Path], function: str, context: str
) -> None:
    stack, log = served
    db = Redis.from_url(REDIS_URL)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{stack.api_url}/e/key", json={"name": f"mw/{function}", "data": {}})
        assert response.status_code == 200, response.text
        [event_id] = response.json()["ids"]
        [run_id] = await run_ids_for_event(db, function, event_id)
        try:
            view = await wait_for_run(db, run_id, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.output()}") from None
        assert view.status == "completed", f"{view.error}\n{stack.output()}"
        assert view.output == {"a": 1}
    finally:
        await db.aclose()
    check_hooks(await logged_run(log, run_id, 3 * len(CHAIN)), context, function, raw="HandlerRequest")


# -- sends -------------------------------------------------------------------------------------------


@pytest.fixture
def send_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "sends.jsonl"
    monkeypatch.setenv(mw_hooks.LOG_ENV, str(log))
    return log


SEND_CALLS = [
    ("client-sync", "before_send_events"),
    ("client-async", "before_send_events"),
    ("client-async", "after_send_events"),
    ("client-sync", "after_send_events"),
]


async def test_client_send_and_send_sync_call_the_send_hooks(redis: Redis, send_log: Path) -> None:
    client = stepq.Client("mw-sender", redis_url=REDIS_URL, middleware=[mw_hooks.ClientSync, mw_hooks.ClientAsync])
    try:
        ids = await client.send([stepq.Event(name="mw/a"), stepq.Event(name="mw/b")])
        assert len(ids) == 2
        # send_sync from a thread with no event loop: the async middleware runs in one of its own.
        [sync_id] = await asyncio.to_thread(client.send_sync, stepq.Event(name="mw/c"))
        assert sync_id
        # skip_middleware sends without the hooks.
        await client.send(stepq.Event(name="mw/d"), skip_middleware=True)
    finally:
        await client.aclose()
    lines = read_log(send_log, None)
    assert [(who, what) for _, who, what, _ in lines] == SEND_CALLS * 2
    assert [detail for *_, detail in lines] == ["mw/a,mw/b"] * 2 + ["ids=2"] * 2 + ["mw/c"] * 2 + ["ids=1"] * 2


async def test_send_hooks_may_change_the_events_that_are_stored(redis: Redis) -> None:
    class Stamp(MiddlewareSync):
        def before_send_events(self, events: list[stepq.Event]) -> None:
            events[:] = [stepq.Event(name=e.name, data={**e.data, "stamped": True}) for e in events]

    client = stepq.Client("mw-stamp", redis_url=REDIS_URL, middleware=[Stamp])
    try:
        [event_id] = await client.send(stepq.Event(name="mw/stamped", data={"n": 1}))
    finally:
        await client.aclose()
    raw = await redis.get(keys.event(event_id))
    assert raw is not None, f"event {event_id} is not stored"
    assert unpack(raw)["data"] == {"n": 1, "stamped": True}


def test_async_middleware_refuses_send_sync_on_the_event_loop_thread_clearly() -> None:
    class Slow(Middleware):
        async def before_send_events(self, events: list[stepq.Event]) -> None:
            await asyncio.sleep(0)

    client = stepq.Client("mw-loop", redis_url=REDIS_URL, middleware=[Slow])

    async def main() -> None:
        client.send_sync(stepq.Event(name="mw/never"))

    with pytest.raises(MiddlewareError, match=r"Slow\.before_send_events .* on the event loop"):
        asyncio.run(main())


# -- in the engine's edge cases ------------------------------------------------------------------------


async def test_a_targeted_parallel_step_tells_of_new_code_before_it_runs_with_memos_left() -> None:
    calls: list[str] = []

    class Recorder(MiddlewareSync):
        def after_memoization(self) -> None:
            calls.append("after_memoization")

        def before_execution(self) -> None:
            calls.append("before_execution")

    client = stepq.Client("mw-parallel", middleware=[Recorder])

    def branch(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            calls.append(f"ran {name}")
            return name

        return run

    @client.create_function(id="both")
    async def both(ctx: stepq.Context) -> tuple[Any, ...]:
        return await ctx.group.parallel(
            (lambda: ctx.step.run("a", branch("a")), lambda: ctx.step.run("b", branch("b")))
        )

    # Step b is done and a is the planned step: a comes first, while b's memo is still unvisited.
    event = stepq.Event(name="mw/x", id="e", ts=1)
    request = ExecutionRequest(event, [event], {sha1("b"): {"data": "b"}}, "run", target_step=sha1("a"))
    result = await invoke(both, request)
    assert isinstance(result, StepsReported), result
    assert [(op.step_id, op.data) for op in result.opcodes] == [("a", "a")]
    assert calls == ["after_memoization", "before_execution", "ran a"]


# -- configuration -----------------------------------------------------------------------------------


def test_middleware_must_be_a_list_of_classes() -> None:
    with pytest.raises(stepq.FunctionConfigError, match="pass the class, not an instance"):
        stepq.Client("mw-bad", middleware=[mw_hooks.ClientSync(None, None)])  # type: ignore[list-item]
    with pytest.raises(stepq.FunctionConfigError, match="must be a list"):
        stepq.Client("mw-bad", middleware=mw_hooks.ClientSync)  # type: ignore[arg-type]
    with pytest.raises(stepq.FunctionConfigError, match=r"class Event must subclass stepq\.Middleware"):
        stepq.Client("mw-bad", middleware=[stepq.Event])  # type: ignore[list-item]
    client = stepq.Client("mw-bad")
    with pytest.raises(stepq.FunctionConfigError, match="create_function\\('f'\\): middleware entries"):
        client.create_function(id="f", middleware=["not callable"])  # type: ignore[list-item]


def test_function_middleware_is_kept_on_the_function_and_its_failure_handler() -> None:
    client = stepq.Client("mw-keep", middleware=[mw_hooks.ClientSync])

    async def on_failure(ctx: stepq.Context) -> None:
        return None

    @client.create_function(id="f", middleware=[mw_hooks.FnSync], on_failure=on_failure)
    async def f(ctx: stepq.Context) -> None:
        return None

    assert f.middleware == [mw_hooks.FnSync]
    client.add_middleware(mw_hooks.ClientAsync)
    assert client.middleware == [mw_hooks.ClientSync, mw_hooks.ClientAsync]
    assert client.functions["f-failure"].middleware == [mw_hooks.FnSync]
