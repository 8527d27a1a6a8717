"""Issue 9: inngest-py 0.5's names and signatures on stepq, and types for users.

The official SDK (installed by the dev extra) is the reference: its ``Inngest``, ``create_function``
and ``__all__`` are read at test time, so a difference shows up here rather than in a user's app.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import inngest
import pytest
from redis.asyncio import Redis

import stepq
from stepq.http_transport import HttpTransport
from tests.helpers import StartWorkers, all_invocations, runs_of, start_run, wait_for_run

#: Names of inngest-py 0.5's ``__all__`` that stepq does not provide (yet), and why.
NOT_PROVIDED = {
    # group.parallel always waits for every branch; no race mode.
    "ParallelMode": "parallel mode",
    # Inngest Cloud's streamed responses: not part of stepq's protocol.
    "Streaming": "streaming",
}

ENGINE_INTERNALS = (
    "ExecutionRequest",
    "ExecutionResult",
    "execute",
    "Opcode",
    "Op",
    "hash_step_id",
    "StepsReported",
    "FunctionReturned",
    "FunctionFailed",
)

FLOW_CONTROL: dict[str, Any] = {
    "batch_events": stepq.Batch(max_size=10, timeout=dt.timedelta(seconds=5)),
    "concurrency": [stepq.Concurrency(limit=2, key="event.data.user_id")],
    "debounce": stepq.Debounce(period=dt.timedelta(seconds=10)),
    "idempotency": "event.data.order_id",
    "priority": stepq.Priority(run="event.data.priority"),
    "rate_limit": stepq.RateLimit(limit=1, period=dt.timedelta(minutes=1)),
    "singleton": stepq.Singleton(mode="skip", key="event.data.user_id"),
    "throttle": stepq.Throttle(limit=5, period=dt.timedelta(seconds=1), burst=2),
}

KEY = "signkey-prod-" + "ab" * 32
FALLBACK = "signkey-prod-" + "cd" * 32


def _params(fn: Any) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items() if name != "self"}


# -- names and signatures --------------------------------------------------------------------------


def test_client_takes_every_keyword_of_inngest_py() -> None:
    ours, theirs = _params(stepq.Inngest.__init__), _params(inngest.Inngest.__init__)
    assert set(theirs) <= set(ours), f"missing: {set(theirs) - set(ours)}"
    for name, param in theirs.items():
        if name != "app_id":
            assert ours[name].kind is inspect.Parameter.KEYWORD_ONLY, name
            assert ours[name].default == param.default, name
    # Code written for Inngest passes app_id by keyword; stepq's Client("shop") passes it by position.
    assert stepq.Inngest(app_id="shop").app_id == stepq.Client("shop").app_id == "shop"
    assert stepq.Client is stepq.Inngest


def test_create_function_takes_every_keyword_of_inngest_py() -> None:
    ours, theirs = _params(stepq.Inngest.create_function), _params(inngest.Inngest.create_function)
    assert set(theirs) <= set(ours), f"missing: {set(theirs) - set(ours)}"
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in theirs)


def test_send_has_inngest_py_signature() -> None:
    for method in ("send", "send_sync"):
        ours, theirs = _params(getattr(stepq.Inngest, method)), _params(getattr(inngest.Inngest, method))
        assert list(ours) == list(theirs) == ["events", "skip_middleware"], method
        assert ours["skip_middleware"].default is False


def test_every_public_name_of_inngest_py_is_importable_from_stepq() -> None:
    missing = set(inngest.__all__) - set(stepq.__all__)
    assert missing <= set(NOT_PROVIDED), (
        f"not in stepq.__all__ and not listed as left out: {missing - set(NOT_PROVIDED)}"
    )
    for name in stepq.__all__:
        assert getattr(stepq, name) is not None, name
    for name in ("Cancel", "Timeouts", "Backoff", "Context", "ContextSync", "Event", "TriggerEvent", "TriggerCron"):
        assert name in stepq.__all__
    assert stepq.serve.__module__.startswith("stepq.serve")


def test_engine_internals_are_not_public() -> None:
    for name in ENGINE_INTERNALS:
        assert name not in stepq.__all__, name
        assert not hasattr(stepq, name), f"stepq.{name} is still importable from the top level"
    from stepq import engine, opcodes, replay

    assert all(callable(x) for x in (engine.execute, replay.ExecutionRequest, opcodes.Opcode, opcodes.hash_step_id))


@pytest.mark.parametrize("name", ["Batch", "Concurrency", "Debounce", "Priority", "RateLimit", "Singleton", "Throttle"])
def test_option_types_have_inngest_py_fields(name: str) -> None:
    ours = [f.name for f in dataclasses.fields(getattr(stepq, name))]
    theirs = list(getattr(inngest, name).model_fields)
    assert sorted(ours) == sorted(theirs)


#: create_function's flow-control keywords -> their config field (Inngest's spelling).
CONFIG_FIELD = {"batch_events": "batchEvents", "rate_limit": "rateLimit"}


@pytest.mark.parametrize("keyword", sorted(FLOW_CONTROL))
def test_each_flow_control_keyword_is_registered_in_inngests_form(keyword: str) -> None:
    client = stepq.Inngest(app_id="t-flow")
    options = {keyword: FLOW_CONTROL[keyword]}
    fn = client.create_function(fn_id="f", trigger=stepq.TriggerEvent(event="e"), **options)(lambda ctx: None)
    assert list(fn.config()["flow"]) == [CONFIG_FIELD.get(keyword, keyword)]


def test_a_valid_combination_of_flow_control_is_kept_and_an_invalid_one_named() -> None:
    # Batching cannot be combined with debounce, singleton or priority, nor idempotency with a rate
    # limit (tests/test_flow_spec.py).
    client = stepq.Inngest(app_id="t-flow")
    valid = {k: v for k, v in FLOW_CONTROL.items() if k not in ("batch_events", "rate_limit")}
    fn = client.create_function(fn_id="f", trigger=stepq.TriggerEvent(event="e"), **valid)(lambda ctx: None)
    assert sorted(fn.config()["flow"]) == sorted(CONFIG_FIELD.get(k, k) for k in valid)
    with pytest.raises(stepq.FunctionConfigError, match="batching cannot be combined with debounce"):
        stepq.Inngest(app_id="t-flow2").create_function(
            fn_id="f", trigger=stepq.TriggerEvent(event="e"), **FLOW_CONTROL
        )


def test_what_stepq_cannot_do_yet_is_refused_not_ignored() -> None:
    with pytest.raises(stepq.FunctionConfigError, match="serializer must have serialize"):
        stepq.Inngest(app_id="t", serializer=object())  # type: ignore[arg-type]
    client = stepq.Inngest(app_id="t")
    with pytest.raises(stepq.FunctionConfigError, match="output_type needs a serializer"):
        client.create_function(fn_id="f", trigger=stepq.TriggerEvent(event="e"), output_type=dict)
    # inngest-py's own serializer fits the protocol.
    assert stepq.Inngest(app_id="t", serializer=inngest.PydanticSerializer()).serializer is not None
    with pytest.raises(stepq.FunctionConfigError, match="jitter"):
        stepq.TriggerCron(cron="* * * * *", jitter="10s")
    with pytest.raises(stepq.FunctionConfigError, match="request_timeout"):
        stepq.Inngest(app_id="t", request_timeout=0)
    with pytest.raises(stepq.FunctionConfigError, match="disagree"):
        stepq.Inngest(app_id="t", event_api_base_url="http://a:1", event_api_url="http://b:2")


def test_inngest_keywords_define_a_function() -> None:
    class ClientMiddleware(stepq.Middleware):
        pass

    class FunctionMiddleware(stepq.MiddlewareSync):
        pass

    class More(stepq.Middleware):
        pass

    client = stepq.Inngest(app_id="t-kw", middleware=[ClientMiddleware])

    async def on_failure(ctx: stepq.Context) -> None:
        return None

    @client.create_function(
        fn_id="f",
        name="F",
        trigger=[stepq.TriggerEvent(event="a"), stepq.TriggerCron(cron="0 * * * *")],
        retries=2,
        cancel=[stepq.Cancel(event="stop", timeout=dt.timedelta(hours=1))],
        timeouts=stepq.Timeouts(finish=dt.timedelta(minutes=5)),
        on_failure=on_failure,
        middleware=[FunctionMiddleware],
    )
    async def f(ctx: stepq.Context) -> int:
        return 1

    assert isinstance(f, stepq.Function)
    assert (f.id, f.name, f.retries, f.slug) == ("f", "F", 2, "t-kw-f")
    assert f.config()["timeouts"] == {"finish": "5m"}
    assert f.middleware == [FunctionMiddleware] and client.middleware == [ClientMiddleware]
    client.add_middleware(More)
    assert client.middleware == [ClientMiddleware, More]
    assert set(client.functions) == {"f", "f-failure"}
    # retries=None (inngest-py's default) means stepq's default: 4 retries.
    g = client.create_function(fn_id="g", trigger=stepq.TriggerEvent(event="b"), retries=None)(f.handler)
    assert g.retries == 4


# -- the client's settings reach what they configure ----------------------------------------------


def test_serve_takes_mode_keys_api_and_env_from_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INNGEST_DEV", "INNGEST_SIGNING_KEY", "INNGEST_SIGNING_KEY_FALLBACK", "INNGEST_ENV"):
        monkeypatch.delenv(name, raising=False)
    prod = stepq.Inngest(
        app_id="t-prod",
        is_production=True,
        signing_key=KEY,
        signing_key_fallback=FALLBACK,
        api_base_url="http://api.internal:8288",
        env="branch-1",
    )

    @prod.create_function(fn_id="f", trigger=stepq.TriggerEvent(event="e"))
    async def f(ctx: stepq.Context) -> None:
        return None

    settings = stepq.serve(prod).handler.settings
    assert settings.mode == "cloud" and not settings.dev
    assert (settings.signing_key, settings.signing_key_fallback) == (KEY, FALLBACK)
    assert settings.api_base_url == "http://api.internal:8288"
    assert settings.inngest_env == prod.env == "branch-1"
    # serve's own arguments still win over the client's.
    assert stepq.serve(prod, dev=True, api_base_url="http://other:1").handler.settings.api_base_url == "http://other:1"

    # Production mode without a key is refused; is_production=False is dev mode, which needs none.
    with pytest.raises(stepq.FunctionConfigError, match="signing key"):
        stepq.serve(stepq.Inngest(app_id="t-nokey", is_production=True))
    assert stepq.serve(stepq.Inngest(app_id="t-dev", is_production=False)).handler.settings.dev

    # Unset, the mode and keys come from the environment when read (as inngest-py reads them).
    later = stepq.Inngest(app_id="t-env")
    assert later.is_production and later.signing_key is None
    monkeypatch.setenv("INNGEST_DEV", "1")
    monkeypatch.setenv("INNGEST_SIGNING_KEY", KEY)
    monkeypatch.setenv("INNGEST_ENV", "branch-2")
    assert not later.is_production and later.signing_key == KEY and later.env == "branch-2"
    monkeypatch.setenv("INNGEST_DEV", "0")
    assert later.is_production
    assert not stepq.Inngest(app_id="t-explicit", is_production=False).is_production


class EventApiStub:
    """A loopback event API: records each ``POST /e/<key>`` and answers with one id per event."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[dict[str, Any]]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, body))
                answer = json.dumps({"ids": [f"id-{i}" for i in range(len(body))], "status": 200}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def event_api() -> Iterator[EventApiStub]:
    stub = EventApiStub()
    stub.thread.start()
    yield stub
    stub.httpd.shutdown()
    stub.httpd.server_close()


async def test_event_api_base_url_and_event_key_send_over_http(event_api: EventApiStub) -> None:
    client = stepq.Inngest(app_id="t-http", event_api_base_url=event_api.url, event_key="key-1", request_timeout=2500)
    try:
        assert await client.send(stepq.Event(name="a/b", data={"n": 1})) == ["id-0"]
        assert client.send_sync([stepq.Event(name="a/c"), stepq.Event(name="a/d")]) == ["id-0", "id-1"]
    finally:
        await client.aclose()
    assert [path for path, _ in event_api.requests] == ["/e/key-1", "/e/key-1"]
    assert [[e["name"] for e in body] for _, body in event_api.requests] == [["a/b"], ["a/c", "a/d"]]
    transport = client.transport
    assert isinstance(transport, HttpTransport) and transport.timeout == 2.5
    timed = stepq.Inngest(app_id="t", event_api_base_url=event_api.url, request_timeout=dt.timedelta(seconds=3))
    assert isinstance(timed.transport, HttpTransport) and timed.transport.timeout == 3.0


async def test_an_inngest_app_runs_under_a_worker_with_its_logger(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("inngest_api")

    run_id = await start_run(sender, redis, "parent", "test/inngest.api", {"id": "r1"})
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view.error
    assert view.output == {"total": 5, "greeting": "hello ada!", "child": {"doubled": 10}}
    # ctx.logger wrote to the client's stdlib logger, each line once although the function was
    # entered once per step (and once more to return).
    assert len(await all_invocations(worker, run_id)) >= 4
    logged = [line for line in worker.stdout().splitlines() if line.startswith("LOG ")]
    assert logged == ["LOG start r1", "LOG done 5"]

    sync_id = await start_run(sender, redis, "sync-parent", "test/inngest.api.sync", {})
    sync_view = await wait_for_run(redis, sync_id)
    assert sync_view.status == "completed", sync_view.error
    assert sync_view.output == {"total": 42, "by_id": {"doubled": 84}}
    assert worker.stdout().splitlines().count("LOG sync start") == 1


async def test_output_type_stores_models_as_json_and_gives_them_back(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("inngest_api")
    run_id = await start_run(sender, redis, "receipts", "test/inngest.api.receipt", {"order_id": 7})
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view.error
    # The parent's invoke gave back a Receipt, deserialized from the child's stored output.
    assert view.output == {"type": "Receipt", "order_id": 7, "at": "2024-01-02T00:00:00+00:00"}
    [listed] = await runs_of(redis, "receipt")
    child = await wait_for_run(redis, listed.run_id)
    assert child.status == "completed", child.error
    stored = {"order_id": 7, "total": 9.5, "at": "2024-01-02T00:00:00Z"}
    assert child.output == stored  # JSON in Redis, by Pydantic's dump
    [make] = child.steps
    assert make.memo == {"data": stored}


async def test_a_sync_function_runs_steps_in_parallel(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("inngest_api")
    run_id = await start_run(sender, redis, "sync-parallel", "test/inngest.api.sync-parallel", {})
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view.error
    assert view.output == [1, 2, 3]
    assert sorted(s.name for s in view.steps) == ["one", "three", "two"]
    assert all(s.attempts == 1 and s.done for s in view.steps)


def test_a_stdlib_logger_binds_through_an_adapter() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    base = logging.getLogger("t-bind")
    base.addHandler(Keep())
    base.setLevel(logging.INFO)
    client = stepq.Inngest(app_id="t-bind", logger=base)
    assert client.logger is base
    other = logging.getLogger("t-bind-2")
    client.set_logger(other)
    assert client.logger is other


# -- types for users --------------------------------------------------------------------------------

USER_CODE = textwrap.dedent(
    """
    from __future__ import annotations

    from typing import Any, assert_type

    import stepq as inngest

    client = inngest.Inngest(app_id="typed")


    def add(a: int, b: int) -> int:
        return a + b


    async def fetch(url: str) -> dict[str, Any]:
        return {"url": url}


    def returns_str() -> str:
        return "x"


    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents


    def make_money(cents: int) -> Money:
        return Money(cents)


    @client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="child"))
    async def child(ctx: inngest.Context) -> list[int]:
        return [1]


    @client.create_function(fn_id="sync-child", trigger=inngest.TriggerEvent(event="sync-child"))
    def sync_child(ctx: inngest.ContextSync) -> float:
        return 1.0


    assert_type(child, inngest.Function[list[int]])
    assert_type(sync_child, inngest.Function[float])


    @client.create_function(
        fn_id="parent",
        trigger=inngest.TriggerEvent(event="parent"),
        retries=2,
        cancel=[inngest.Cancel(event="stop")],
        timeouts=inngest.Timeouts(finish=60_000),
    )
    async def parent(ctx: inngest.Context) -> dict[str, Any]:
        assert_type(await ctx.step.run("add", add, 1, 2), int)
        assert_type(await ctx.step.run("fetch", fetch, "https://example.com"), dict[str, Any])
        assert_type(await ctx.step.run("str", returns_str), str)
        assert_type(await ctx.step.run("lambda", lambda: [1, 2]), list[int])
        assert_type(await ctx.step.run("money", make_money, 5, output_type=Money), Money)
        assert_type(await ctx.step.invoke("child", function=child, data={"n": 1}), list[int])
        assert_type(await ctx.step.invoke_by_id("child", function_id="child"), object)
        assert_type(await ctx.step.wait_for_event("w", event="e", timeout=60_000), inngest.Event | None)
        assert_type(await ctx.step.send_event("s", inngest.Event(name="e")), list[str])
        assert_type(await ctx.group.parallel([lambda: ctx.step.run("p", add, 1, 1)]), tuple[int, ...])
        await ctx.step.sleep("nap", 1000)
        return {}


    @client.create_function(fn_id="sync-parent", trigger=inngest.TriggerEvent(event="sync-parent"))
    def sync_parent(ctx: inngest.ContextSync) -> None:
        assert_type(ctx.step.run("add", add, 1, 2), int)
        assert_type(ctx.step.invoke("child", function=sync_child), float)
        assert_type(ctx.group.parallel([lambda: ctx.step.run("p", add, 1, 1)]), tuple[int, ...])
        ctx.step.sleep("nap", 1000)


    async def send() -> list[str]:
        return await client.send(inngest.Event(name="parent", data={"x": 1}))
    """
)

WRONG_CODE = textwrap.dedent(
    """
    from __future__ import annotations

    import stepq as inngest

    client = inngest.Inngest(app_id="typed")


    def returns_str() -> str:
        return "x"


    def add(a: int, b: int) -> int:
        return a + b


    @client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="child"))
    async def child(ctx: inngest.Context) -> list[int]:
        return [1]


    @client.create_function(fn_id="parent", trigger=inngest.TriggerEvent(event="parent"))
    async def parent(ctx: inngest.Context) -> None:
        x: int = await ctx.step.run("a", returns_str)  # WRONG: the step returns a str
        await ctx.step.run("b", add, 1, "2")  # WRONG: add takes two ints
        y: str = await ctx.step.invoke("c", function=child)  # WRONG: child returns a list[int]


    @client.create_function(fn_id="sync-parent", trigger=inngest.TriggerEvent(event="sync-parent"))
    def sync_parent(ctx: inngest.ContextSync) -> None:
        z: int = ctx.step.run("a", returns_str)  # WRONG: the step returns a str


    client.create_function(fn_id="bad", trigger=inngest.TriggerEvent(event="e"), retries="3")  # WRONG: an int
    """
)


def _mypy(tmp_path: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` as a user runs it, outside this repository's configuration."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_user_code_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    (tmp_path / "user_app.py").write_text(USER_CODE)
    (tmp_path / "wrong_app.py").write_text(WRONG_CODE)

    result = _mypy(tmp_path, "user_app.py", "wrong_app.py")

    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("user_app.py")], result.stdout
    wrong_lines = [i for i, line in enumerate(WRONG_CODE.splitlines(), start=1) if "# WRONG" in line]
    reported = {int(e.split(":")[1]) for e in errors if e.startswith("wrong_app.py")}
    assert reported == set(wrong_lines), result.stdout
    assert result.returncode == 1


def test_the_package_ships_py_typed() -> None:
    assert (Path(stepq.__file__).parent / "py.typed").exists()
