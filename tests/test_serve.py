"""``stepq.serve``: functions served over HTTP with Inngest's SDK protocol, and ``stepq.signing``.

No Redis: the app runs under uvicorn on a loopback port (or in-process through httpx's ASGI
transport), a small Starlette app on another port stands in for the stepq API, and requests are
built as the executor builds them (reference/inngest-protocol.md §2). Signatures are checked
against the official Inngest Python SDK's own code when it is installed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import stepq
from stepq.serve import SDK_NAME, ServeApp, serve_wsgi
from stepq.signing import (
    SignatureError,
    SigningKeyError,
    bearer,
    bearer_matches,
    canonical_json,
    hash_signing_key,
    sign,
    verify,
)

APP = "shop"
KEY = "signkey-prod-" + "ab" * 32
FALLBACK = "signkey-prod-" + "cd" * 32
OTHER = "signkey-prod-" + "ef" * 32


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# -- the app under test --------------------------------------------------------------------------

client = stepq.Client(APP, event_api_url="http://127.0.0.1:1", event_key="ek-test")


@client.create_function(id="two-steps", trigger=stepq.TriggerEvent(event="shop/order"), retries=2)
async def two_steps(ctx: stepq.Context) -> dict[str, Any]:
    first = await ctx.step.run("a", lambda: {"n": ctx.event.data.get("start", 1)})
    second = await ctx.step.run("b", lambda: first["n"] + 1)
    return {"total": second, "events": len(ctx.events), "run": ctx.run_id}


@client.create_function(id="flaky", trigger=stepq.TriggerEvent(event="shop/flaky"), retries=2)
async def flaky(ctx: stepq.Context) -> None:
    def boom() -> None:
        raise ValueError("the warehouse is on fire")

    await ctx.step.run("boom", boom)


@client.create_function(id="doomed", trigger=stepq.TriggerEvent(event="shop/doomed"))
async def doomed(ctx: stepq.Context) -> None:
    raise stepq.NonRetriableError("card declined for good")


@client.create_function(id="later", trigger=stepq.TriggerEvent(event="shop/later"))
async def later(ctx: stepq.Context) -> None:
    if ctx.event.data.get("in_step"):

        def busy() -> None:
            raise stepq.RetryAfterError("rate limited", 42_000)  # ms, as in inngest-py

        await ctx.step.run("call-api", busy)
    raise stepq.RetryAfterError("come back later", dt.timedelta(seconds=30))


@client.create_function(id="fan-out", trigger=stepq.TriggerEvent(event="shop/fan"))
async def fan_out(ctx: stepq.Context) -> list[Any]:
    results = await ctx.group.parallel([lambda: ctx.step.run("x", lambda: "X"), lambda: ctx.step.run("y", lambda: "Y")])
    return list(results)


@client.create_function(
    id="plain",
    trigger=[
        stepq.TriggerEvent(event="shop/plain", expression="event.data.ok == true"),
        stepq.TriggerCron("0 9 * * *"),
    ],
)
def plain(ctx: stepq.ContextSync) -> str:
    value = ctx.step.run("sync-step", lambda: "sync")
    return f"{value}-done"


async def _on_failure(ctx: stepq.Context) -> None:
    return None


@client.create_function(
    id="with-handler",
    trigger=stepq.TriggerEvent(event="shop/handled"),
    retries=1,
    on_failure=_on_failure,
    cancel=[stepq.Cancel(event="shop/cancelled", if_exp="async.data.id == event.data.id", timeout="1h")],
    timeouts=stepq.Timeouts(finish="2h"),
)
async def with_handler(ctx: stepq.Context) -> None:
    return None


def event(name: str = "shop/order", **data: Any) -> dict[str, Any]:
    return {"name": name, "data": data, "id": "evt-1", "ts": 1_700_000_000_000, "user": {}}


def call(
    *,
    ev: dict[str, Any] | None = None,
    steps: dict[str, Any] | None = None,
    attempt: int = 0,
    max_attempts: int | None = None,
    disable: bool = False,
    use_api: bool = False,
    run_id: str = "01RUN",
) -> bytes:
    """A call request body as the executor sends it (protocol §2.3)."""
    ev = ev or event()
    steps = steps or {}
    ctx: dict[str, Any] = {
        "fn_id": "fn-uuid",
        "run_id": run_id,
        "env": "test",
        "step_id": "step",
        "attempt": attempt,
        "stack": {"stack": list(steps), "current": len(steps)},
        "disable_immediate_execution": disable,
        "use_api": use_api,
    }
    if max_attempts is not None:
        ctx["max_attempts"] = max_attempts
    body = {
        "event": ev,
        "events": [] if use_api else [ev],
        "steps": {} if use_api else steps,
        "ctx": ctx,
        "version": 2,
        "use_api": use_api,
    }
    return canonical_json(body)


def url(fn: str, step: str = "step", **extra: str) -> str:
    query = {"fnId": f"{APP}-{fn}", "stepId": step, **extra}
    return "/api/inngest?" + "&".join(f"{k}={v}" for k, v in query.items())


def assert_protocol_headers(response: httpx.Response) -> None:
    assert response.headers["x-inngest-sdk"] == SDK_NAME
    assert SDK_NAME.startswith("stepq:v")
    assert response.headers["x-inngest-req-version"] == "2"
    assert response.headers["content-type"] == "application/json"


def asgi_client(app: ServeApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test")


def dev_app(**kw: Any) -> ServeApp:
    return stepq.serve(client, dev=True, api_base_url=kw.pop("api_base_url", "http://127.0.0.1:9"), **kw)


def prod_app(**kw: Any) -> ServeApp:
    kw.setdefault("signing_key", KEY)
    return stepq.serve(client, dev=False, api_base_url=kw.pop("api_base_url", "http://127.0.0.1:9"), **kw)


# -- servers on loopback -------------------------------------------------------------------------


class LoopbackServer:
    """An ASGI app under uvicorn on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class FakeApi:
    """Stands in for the stepq API: records what the SDK sends, answers what tests set."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.register_answer: tuple[int, Any] = (200, {"ok": True, "modified": True})
        self.batch: tuple[int, Any] = (200, [])
        self.actions: tuple[int, Any] = (200, {})

    def _record(self, request: Request, body: bytes) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "body": json.loads(body) if body else None,
            }
        )

    def app(self) -> Starlette:
        async def register(request: Request) -> Response:
            self._record(request, await request.body())
            status, body = self.register_answer
            return JSONResponse(body, status)

        async def batch(request: Request) -> Response:
            self._record(request, b"")
            return JSONResponse(self.batch[1], self.batch[0])

        async def actions(request: Request) -> Response:
            self._record(request, b"")
            return JSONResponse(self.actions[1], self.actions[0])

        return Starlette(
            routes=[
                Route("/fn/register", register, methods=["POST"]),
                Route("/v0/runs/{run_id}/batch", batch, methods=["GET"]),
                Route("/v0/runs/{run_id}/actions", actions, methods=["GET"]),
            ]
        )


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi()
    with LoopbackServer(api.app()) as server:
        yield api, server.url


@pytest.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The dev-mode app mounted in Starlette at /api/inngest, on a real loopback socket."""
    app = Starlette(routes=[Route("/api/inngest", dev_app())])
    with LoopbackServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            yield http, server.url


# -- POST: running functions ---------------------------------------------------------------------


async def test_discovery_runs_the_first_step_over_loopback(served: tuple[httpx.AsyncClient, str]) -> None:
    http, _ = served
    response = await http.post(url("two-steps"), content=call(ev=event(start=5)))
    assert response.status_code == 206, response.text
    assert_protocol_headers(response)
    assert response.headers["x-inngest-no-retry"] == "false"
    assert "x-inngest-signature" not in response.headers
    assert response.json() == [
        {
            "op": "StepRun",
            "id": sha1("a"),
            "name": "a",
            "displayName": "a",
            "userland": {"id": "a", "index": None},
            "data": {"n": 5},
        }
    ]


async def test_memo_of_step_one_runs_step_two_then_both_return(served: tuple[httpx.AsyncClient, str]) -> None:
    http, _ = served
    step1 = {sha1("a"): {"data": {"n": 5}}}
    response = await http.post(url("two-steps"), content=call(steps=step1))
    assert response.status_code == 206
    [op] = response.json()
    assert (op["op"], op["id"], op["data"]) == ("StepRun", sha1("b"), 6)

    both = {**step1, sha1("b"): {"data": 6}}
    response = await http.post(url("two-steps"), content=call(steps=both, run_id="01RUN-X"))
    assert response.status_code == 200
    assert_protocol_headers(response)
    assert response.json() == {"total": 6, "events": 1, "run": "01RUN-X"}


async def test_a_failing_step_reports_step_error_then_step_failed_on_the_last_attempt() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.post(url("flaky"), content=call(ev=event("shop/flaky"), attempt=0))
        assert response.status_code == 206
        assert response.headers["x-inngest-no-retry"] == "false"
        [op] = response.json()
        assert op["op"] == "StepError" and op["id"] == sha1("boom")
        assert op["error"]["name"] == "ValueError"
        assert op["error"]["message"] == "the warehouse is on fire"
        assert "Traceback" in op["error"]["stack"]

        # retries=2: attempt 2 of 3 is the last.
        response = await http.post(url("flaky"), content=call(ev=event("shop/flaky"), attempt=2))
        [op] = response.json()
        assert response.status_code == 206 and op["op"] == "StepFailed"

        # The executor's ctx.max_attempts wins over the function's retries.
        response = await http.post(url("flaky"), content=call(ev=event("shop/flaky"), attempt=0, max_attempts=1))
        assert response.json()[0]["op"] == "StepFailed"
        response = await http.post(url("flaky"), content=call(ev=event("shop/flaky"), attempt=2, max_attempts=5))
        assert response.json()[0]["op"] == "StepError"

        # Memoized failure: the StepError escapes the function, which fails for good.
        memo = {sha1("boom"): {"error": {"name": "ValueError", "message": "the warehouse is on fire"}}}
        response = await http.post(url("flaky"), content=call(ev=event("shop/flaky"), steps=memo))
        assert response.status_code == 500
        assert response.headers["x-inngest-no-retry"] == "true"
        assert response.json()["name"] == "ValueError"


async def test_non_retriable_error_answers_500_with_no_retry() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.post(url("doomed"), content=call(ev=event("shop/doomed")))
    assert response.status_code == 500
    assert_protocol_headers(response)
    assert response.headers["x-inngest-no-retry"] == "true"
    assert "retry-after" not in response.headers
    body = response.json()
    assert set(body) == {"name", "message", "stack"}
    assert (body["name"], body["message"]) == ("NonRetriableError", "card declined for good")


async def test_retry_after_error_sets_retry_after() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.post(url("later"), content=call(ev=event("shop/later")))
        assert response.status_code == 500
        assert response.headers["retry-after"] == "30"
        assert response.headers["x-inngest-no-retry"] == "false"
        assert response.json()["name"] == "RetryAfterError"

        response = await http.post(url("later"), content=call(ev=event("shop/later", in_step=True)))
        assert response.status_code == 206
        assert response.headers["retry-after"] == "42"
        assert response.headers["x-inngest-no-retry"] == "false"
        assert response.json()[0]["op"] == "StepError"


async def test_parallel_steps_are_planned_and_a_targeted_step_runs_alone() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.post(url("fan-out"), content=call(ev=event("shop/fan")))
        assert response.status_code == 206
        ops = response.json()
        assert [(o["op"], o["id"]) for o in ops] == [("StepPlanned", sha1("x")), ("StepPlanned", sha1("y"))]

        response = await http.post(url("fan-out", step=sha1("y")), content=call(ev=event("shop/fan"), disable=True))
        assert response.status_code == 206
        assert [(o["op"], o["id"], o["data"]) for o in response.json()] == [("StepRun", sha1("y"), "Y")]

        memo = {sha1("y"): {"data": "Y"}, sha1("x"): {"data": "X"}}
        response = await http.post(url("fan-out"), content=call(ev=event("shop/fan"), steps=memo))
        assert (response.status_code, response.json()) == (200, ["X", "Y"])


async def test_disable_immediate_execution_plans_the_step() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.post(url("two-steps"), content=call(disable=True))
    [op] = response.json()
    assert (response.status_code, op["op"], op["id"]) == (206, "StepPlanned", sha1("a"))


async def test_a_plain_def_function_runs() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.post(url("plain"), content=call(ev=event("shop/plain", ok=True)))
        assert response.json()[0]["data"] == "sync"
        memo = {sha1("sync-step"): {"data": "sync"}}
        response = await http.post(url("plain"), content=call(ev=event("shop/plain"), steps=memo))
    assert (response.status_code, response.json()) == (200, "sync-done")


async def test_unknown_or_missing_function_id_answers_500_naming_it() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.post("/api/inngest?fnId=shop-nope&stepId=step", content=call())
        assert response.status_code == 500
        assert_protocol_headers(response)
        body = response.json()
        assert body["name"] == "FunctionNotFoundError"
        assert "'shop-nope'" in body["message"] and "shop-two-steps" in body["message"]

        response = await http.post("/api/inngest?stepId=step", content=call())
        assert response.status_code == 500 and "fnId" in response.json()["message"]

        # The bare function id (pre-0.3 Python SDK URLs) still finds it.
        response = await http.post("/api/inngest?fnId=two-steps&stepId=step", content=call())
        assert response.status_code == 206


async def test_malformed_requests_name_the_field_without_a_traceback() -> None:
    async with asgi_client(dev_app()) as http:
        for body, field in [
            (b"{not json", "not JSON"),
            (b"[]", "JSON object"),
            (json.dumps({"event": event(), "steps": {}}).encode(), "ctx"),
            (json.dumps({"event": event(), "ctx": {"attempt": 0}}).encode(), "ctx.run_id"),
            (json.dumps({"event": event(), "ctx": {"run_id": "r", "attempt": -1}}).encode(), "ctx.attempt"),
            (json.dumps({"event": {"data": {}}, "ctx": {"run_id": "r"}}).encode(), "event.name"),
            (json.dumps({"event": event(), "steps": [], "ctx": {"run_id": "r"}}).encode(), "steps"),
        ]:
            response = await http.post(url("two-steps"), content=body)
            assert response.status_code == 500, body
            message = response.json()["message"]
            assert field in message, (field, message)
            assert "Traceback" not in response.text
            assert_protocol_headers(response)


async def test_events_with_fields_stepq_does_not_model_are_accepted() -> None:
    ev = {**event(), "meta": {"sessions": []}, "v": "2024-01-01"}
    async with asgi_client(dev_app()) as http:
        response = await http.post(url("two-steps"), content=call(ev=ev))
    assert response.status_code == 206


async def test_trust_probe_and_other_methods() -> None:
    async with asgi_client(prod_app()) as http:
        body = b""
        response = await http.post(
            "/api/inngest?probe=trust", content=body, headers={"X-Inngest-Signature": sign(body, KEY, int(time.time()))}
        )
        assert response.status_code == 200
        verify(response.content, response.headers["x-inngest-signature"], [KEY], int(time.time()))
        response = await http.post("/api/inngest?probe=trust", content=body)
        assert response.status_code == 401
        response = await http.delete("/api/inngest")
        assert response.status_code == 405
        assert_protocol_headers(response)


# -- production mode: signatures -----------------------------------------------------------------


async def test_production_mode_refuses_missing_bad_and_stale_signatures() -> None:
    body = call()
    now = int(time.time())
    cases = {
        "missing": {},
        "malformed": {"X-Inngest-Signature": "garbage"},
        "does not match": {"X-Inngest-Signature": sign(body, OTHER, now)},
        "does not match ": {"X-Inngest-Signature": sign(body + b"x", KEY, now)},
        "s old": {"X-Inngest-Signature": sign(body, KEY, now - 301)},
        "in the future": {"X-Inngest-Signature": sign(body, KEY, now + 360)},  # well past the 300 s tolerance
    }
    async with asgi_client(prod_app()) as http:
        for name, headers in cases.items():
            response = await http.post(url("two-steps"), content=body, headers=headers)
            assert name.strip() in response.json()["message"], response.json()
            response = await http.post(url("two-steps"), content=body, headers=headers)
            assert response.status_code == 401, name
            assert response.json()["name"] == "UnauthorizedError"
            assert response.json()["message"].startswith("Unauthorized: "), name
            assert "x-inngest-signature" not in response.headers
            assert response.headers["x-inngest-sdk"] == SDK_NAME


async def test_production_mode_runs_signed_requests_and_signs_answers() -> None:
    async with asgi_client(prod_app(signing_key_fallback=FALLBACK)) as http:
        body = call()
        response = await http.post(
            url("two-steps"), content=body, headers={"X-Inngest-Signature": sign(body, KEY, int(time.time()) - 100)}
        )
        assert response.status_code == 206
        verify(response.content, response.headers["x-inngest-signature"], [KEY], int(time.time()))
        with pytest.raises(SignatureError):
            verify(response.content, response.headers["x-inngest-signature"], [FALLBACK], int(time.time()))

        # The fallback key is accepted, and the answer is signed with it.
        memo = {sha1("a"): {"data": {"n": 1}}, sha1("b"): {"data": 2}}
        body = call(steps=memo)
        response = await http.post(
            url("two-steps"), content=body, headers={"X-Inngest-Signature": sign(body, FALLBACK, int(time.time()))}
        )
        assert response.status_code == 200
        verify(response.content, response.headers["x-inngest-signature"], [FALLBACK], int(time.time()))


async def test_production_mode_over_loopback_with_the_official_sdk_checking_the_answer() -> None:
    net = pytest.importorskip("inngest._internal.net")
    server_lib = pytest.importorskip("inngest._internal.server_lib")
    with LoopbackServer(Starlette(routes=[Route("/api/inngest", prod_app())])) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            body = call()
            # Signed by the official SDK's own "sign like the Inngest server" helper.
            signature = net.sign_request(body, KEY, int(time.time()))
            response = await http.post(url("two-steps"), content=body, headers={"X-Inngest-Signature": signature})
    assert response.status_code == 206
    checked = net.validate_response_sig(
        body=response.content,
        headers={"x-inngest-signature": response.headers["x-inngest-signature"]},
        mode=server_lib.ServerKind.CLOUD,
        signing_key=KEY,
    )
    assert checked == KEY


async def test_dev_mode_checks_no_signature() -> None:
    async with asgi_client(dev_app(signing_key=KEY)) as http:
        response = await http.post(
            url("two-steps"), content=call(), headers={"X-Inngest-Signature": "t=1&s=" + "0" * 64}
        )
    assert response.status_code == 206
    assert "x-inngest-signature" not in response.headers


def test_production_mode_needs_a_valid_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INNGEST_SIGNING_KEY", raising=False)
    monkeypatch.delenv("INNGEST_DEV", raising=False)
    with pytest.raises(stepq.FunctionConfigError, match="signing key"):
        stepq.serve(client)
    with pytest.raises(SigningKeyError, match="hex"):
        stepq.serve(client, signing_key="signkey-prod-not-hex")


def test_serve_and_serve_wsgi_refuse_a_keyword_they_do_not_take() -> None:
    # The options are one TypedDict (``**options``): a misspelt one must still fail, not be ignored.
    with pytest.raises(TypeError, match="serv_path"):
        stepq.serve(client, dev=True, serv_path="/x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="signingkey"):
        serve_wsgi(client, dev=True, signingkey=KEY)  # type: ignore[call-arg]
    assert stepq.serve(client, dev=True, framework="starlette").handler.settings.framework == "starlette"
    assert serve_wsgi(client, dev=True).handler.settings.framework == "wsgi"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNGEST_DEV", "1")
    monkeypatch.setenv("INNGEST_API_BASE_URL", "http://api.internal:8288/")
    monkeypatch.setenv("INNGEST_SERVE_ORIGIN", "app.example.com")
    monkeypatch.setenv("INNGEST_SIGNING_KEY", KEY)
    monkeypatch.setenv("INNGEST_SIGNING_KEY_FALLBACK", FALLBACK)
    settings = stepq.serve(client).handler.settings
    assert settings.dev and settings.mode == "dev"
    assert settings.api_base_url == "http://api.internal:8288"
    assert settings.serve_origin == "https://app.example.com"
    assert settings.signing_keys == (KEY, FALLBACK)

    monkeypatch.delenv("INNGEST_API_BASE_URL")
    monkeypatch.setenv("INNGEST_DEV", "http://127.0.0.1:8300")
    assert stepq.serve(client).handler.settings.api_base_url == "http://127.0.0.1:8300"
    monkeypatch.setenv("INNGEST_BASE_URL", "http://base:1")
    assert stepq.serve(client).handler.settings.api_base_url == "http://base:1"
    monkeypatch.setenv("INNGEST_DEV", "0")
    assert stepq.serve(client).handler.settings.mode == "cloud"
    assert stepq.serve(client, dev=True, api_base_url="http://x:2").handler.settings.api_base_url == "http://x:2"


# -- GET: introspection --------------------------------------------------------------------------


async def test_introspection_in_dev_mode() -> None:
    async with asgi_client(dev_app()) as http:
        response = await http.get("/api/inngest")
        assert response.status_code == 200
        assert_protocol_headers(response)
        assert response.json() == {
            "schema_version": "2024-05-24",
            "authentication_succeeded": None,
            "function_count": len(client.functions),
            "has_event_key": True,
            "has_signing_key": False,
            "has_signing_key_fallback": False,
            "mode": "dev",
            "capabilities": {"trust_probe": "v1"},
        }
        # A cloud server probing a dev app is refused, as Inngest's Python SDK does.
        response = await http.get("/api/inngest", headers={"X-Inngest-Server-Kind": "cloud"})
        assert response.status_code == 403


async def test_introspection_in_production_mode() -> None:
    async with asgi_client(prod_app(serve_origin="https://shop.example.com")) as http:
        response = await http.get("/api/inngest")
        body = response.json()
        assert body["authentication_succeeded"] is None and body["mode"] == "cloud"
        assert body["has_signing_key"] is True and "signing_key_hash" not in body

        response = await http.get("/api/inngest", headers={"X-Inngest-Signature": sign(b"", OTHER, int(time.time()))})
        assert response.json()["authentication_succeeded"] is False

        response = await http.get("/api/inngest", headers={"X-Inngest-Signature": sign(b"", KEY, int(time.time()))})
        body = response.json()
        verify(response.content, response.headers["x-inngest-signature"], [KEY], int(time.time()))
    assert body["authentication_succeeded"] is True
    assert body["app_id"] == APP
    assert body["signing_key_hash"] == hash_signing_key(KEY)
    assert body["signing_key_fallback_hash"] is None
    assert body["event_key_hash"] == hashlib.sha256(b"ek-test").hexdigest()
    assert body["serve_origin"] == "https://shop.example.com" and body["serve_path"] == "/api/inngest"
    assert body["api_origin"] == "http://127.0.0.1:9"
    assert body["function_count"] == len(client.functions)


# -- PUT: sync -------------------------------------------------------------------------------------


async def test_put_registers_the_functions_with_the_api(fake_api: tuple[FakeApi, str]) -> None:
    api, api_url = fake_api
    app = Starlette(routes=[Route("/api/inngest", dev_app(api_base_url=api_url))])
    with LoopbackServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.put("/api/inngest?deployId=dep-7")
    assert response.status_code == 200, response.text
    assert_protocol_headers(response)
    assert response.json() == {"message": "Successfully registered", "modified": True}

    [sent] = api.requests
    assert (sent["method"], sent["path"], sent["query"]) == ("POST", "/fn/register", {"deployId": "dep-7"})
    assert "authorization" not in sent["headers"]  # dev mode
    assert sent["headers"]["x-inngest-sdk"] == SDK_NAME
    payload = sent["body"]
    app_url = f"{server.url}/api/inngest"
    assert {k: payload[k] for k in ("url", "appName", "sdk", "framework", "v", "deployType")} == {
        "url": app_url,
        "appName": APP,
        "sdk": SDK_NAME,
        "framework": "asgi",
        "v": "0.1",
        "deployType": "ping",
    }
    functions = {f["id"]: f for f in payload["functions"]}
    assert set(functions) == {fn.slug for fn in client.functions.values()}
    assert functions["shop-two-steps"] == {
        "id": "shop-two-steps",
        "name": "two-steps",
        "triggers": [{"event": "shop/order"}],
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": f"{app_url}?fnId=shop-two-steps&stepId=step"},
                "retries": {"attempts": 2},
            }
        },
        "backoff": client.functions["two-steps"].config()["backoff"],
    }
    assert functions["shop-plain"]["triggers"] == [
        {"event": "shop/plain", "expression": "event.data.ok == true"},
        {"cron": "0 9 * * *"},
    ]
    handled = functions["shop-with-handler"]
    assert handled["cancel"] == [{"event": "shop/cancelled", "if": "async.data.id == event.data.id", "timeout": "1h"}]
    assert handled["timeouts"] == {"finish": "2h"}
    failure = functions["shop-with-handler-failure"]
    assert failure["triggers"] == [
        {"event": "stepq/function.failed", "expression": "event.data.function_id == 'shop-with-handler'"}
    ]
    assert failure["steps"]["step"]["retries"] == {"attempts": 0}
    assert "cancel" not in functions["shop-two-steps"] and "timeouts" not in functions["shop-two-steps"]


async def test_put_in_production_mode_authorizes_and_uses_the_serve_origin(fake_api: tuple[FakeApi, str]) -> None:
    api, api_url = fake_api
    app = prod_app(
        api_base_url=api_url,
        signing_key_fallback=FALLBACK,
        serve_origin="https://shop.example.com/",
        serve_path="/inngest/",
    )
    api.register_answer = (200, {"ok": True, "modified": False})
    async with asgi_client(app) as http:
        response = await http.put("/inngest")
    assert response.json() == {"message": "Successfully registered", "modified": False}
    [sent] = api.requests
    assert sent["headers"]["authorization"] == bearer(KEY)
    assert sent["body"]["url"] == "https://shop.example.com/inngest"
    assert "deployId" not in sent["body"]["url"] and sent["query"] == {}

    # The API refuses the primary key: the fallback is tried.
    api.requests.clear()
    api.register_answer = (401, {"error": "bad key"})
    async with asgi_client(app) as http:
        response = await http.put("/inngest")
    assert [r["headers"]["authorization"] for r in api.requests] == [bearer(KEY), bearer(FALLBACK)]
    assert response.status_code == 500
    assert "bad key" in response.json()["message"] and response.json()["modified"] is False


async def test_put_answers_the_api_error(fake_api: tuple[FakeApi, str]) -> None:
    api, api_url = fake_api
    api.register_answer = (400, {"ok": False, "error": "invalid app config: functions[0].triggers"})
    async with asgi_client(dev_app(api_base_url=api_url)) as http:
        response = await http.put("/api/inngest")
        assert response.status_code == 500
        assert_protocol_headers(response)
        body = response.json()
        assert body["modified"] is False
        assert "functions[0].triggers" in body["message"] and "400" in body["message"]

        # The wrong kind of server: refused before anything is sent.
        api.requests.clear()
        response = await http.put("/api/inngest", headers={"X-Inngest-Server-Kind": "cloud"})
        assert response.status_code == 400 and api.requests == []

    async with asgi_client(dev_app(api_base_url="http://127.0.0.1:9")) as http:
        response = await http.put("/api/inngest")
    assert response.status_code == 500
    assert "could not reach the API" in response.json()["message"]


async def test_serving_a_given_function_serves_its_failure_handler(fake_api: tuple[FakeApi, str]) -> None:
    api, api_url = fake_api
    app = stepq.serve(client, [with_handler, two_steps], dev=True, api_base_url=api_url)
    async with asgi_client(app) as http:
        response = await http.put("/api/inngest")
        assert response.status_code == 200
        ids = [f["id"] for f in api.requests[0]["body"]["functions"]]
        assert ids == ["shop-with-handler", "shop-with-handler-failure", "shop-two-steps"]
        response = await http.post(url("flaky"), content=call(ev=event("shop/flaky")))
        assert response.status_code == 500 and "not served" in response.json()["message"]
        failed = event("stepq/function.failed", function_id="shop-with-handler", run_id="r0", error={}, event={})
        response = await http.post(url("with-handler-failure"), content=call(ev=failed))
        assert (response.status_code, response.json()) == (200, None)

    other = stepq.Client("other")
    with pytest.raises(stepq.FunctionConfigError, match="belongs to app"):
        stepq.serve(other, [two_steps], dev=True)


# -- use_api ----------------------------------------------------------------------------------------


async def test_use_api_fetches_events_and_memo(fake_api: tuple[FakeApi, str]) -> None:
    api, api_url = fake_api
    api.batch = (200, [event(start=10), event(start=20)])
    api.actions = (200, {sha1("a"): {"data": {"n": 10}}})
    async with asgi_client(prod_app(api_base_url=api_url)) as http:
        body = call(use_api=True, run_id="01BIG")
        response = await http.post(
            url("two-steps"), content=body, headers={"X-Inngest-Signature": sign(body, KEY, int(time.time()))}
        )
    assert response.status_code == 206, response.text
    [op] = response.json()
    assert (op["id"], op["data"]) == (sha1("b"), 11)
    paths = sorted(r["path"] for r in api.requests)
    assert paths == ["/v0/runs/01BIG/actions", "/v0/runs/01BIG/batch"]
    assert {r["headers"]["authorization"] for r in api.requests} == {bearer(KEY)}


async def test_use_api_failure_answers_500(fake_api: tuple[FakeApi, str]) -> None:
    api, api_url = fake_api
    api.batch = (404, {"error": "no such run"})
    async with asgi_client(dev_app(api_base_url=api_url)) as http:
        response = await http.post(url("two-steps"), content=call(use_api=True))
        assert response.status_code == 500
        assert response.headers["x-inngest-no-retry"] == "false"
        assert "404" in response.json()["message"] and "no such run" in response.json()["message"]
    async with asgi_client(dev_app(api_base_url="http://127.0.0.1:9")) as http:
        response = await http.post(url("two-steps"), content=call(use_api=True))
    assert response.status_code == 500 and "could not fetch" in response.json()["message"]


# -- frameworks --------------------------------------------------------------------------------------


async def test_mounts_in_fastapi() -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    app.add_route("/api/inngest", dev_app(), methods=["GET", "POST", "PUT"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as http:
        response = await http.post(url("two-steps"), content=call())
        assert response.status_code == 206 and response.json()[0]["id"] == sha1("a")
        response = await http.get("/api/inngest")
        assert response.json()["mode"] == "dev"


def test_wsgi_in_flask_over_loopback() -> None:
    flask = pytest.importorskip("flask")
    serving = pytest.importorskip("werkzeug.serving")
    middleware = pytest.importorskip("werkzeug.middleware.dispatcher")
    flask_app = flask.Flask("shop")
    flask_app.wsgi_app = middleware.DispatcherMiddleware(
        flask_app.wsgi_app, {"/api/inngest": serve_wsgi(client, signing_key=KEY, dev=False)}
    )
    server = serving.make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with httpx.Client(base_url=base) as http:
            body = call(ev=event("shop/plain", ok=True))
            response = http.post(
                url("plain"), content=body, headers={"X-Inngest-Signature": sign(body, KEY, int(time.time()))}
            )
            assert response.status_code == 206, response.text
            assert_protocol_headers(response)
            assert response.json()[0]["data"] == "sync"
            verify(response.content, response.headers["x-inngest-signature"], [KEY], int(time.time()))
            assert http.post(url("plain"), content=body).status_code == 401
            response = http.get("/api/inngest")
            assert response.json()["mode"] == "cloud"
    finally:
        server.shutdown()
        thread.join(10)


async def test_wsgi_called_from_a_thread_with_a_running_loop() -> None:
    app = serve_wsgi(client, dev=True)
    body = call()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/inngest",
        "QUERY_STRING": "fnId=shop-two-steps&stepId=step",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": __import__("io").BytesIO(body),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "app.test",
    }
    statuses: list[str] = []
    chunks = app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["206 Partial Content"]
    assert json.loads(b"".join(chunks))[0]["id"] == sha1("a")


# -- stepq.signing ---------------------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    body = b'{"a":1}'
    header = sign(body, KEY, 1_700_000_000)
    timestamp, _, signature = header.partition("&s=")
    assert timestamp == "t=1700000000"
    import hmac

    expected = hmac.new(("ab" * 32).encode(), body + b"1700000000", hashlib.sha256).hexdigest()
    assert signature == expected
    # The prefix does not change the key.
    assert sign(body, "ab" * 32, 1_700_000_000) == header
    verify(body, header, [KEY], 1_700_000_000 + 300)
    verify(body, header, [None, OTHER, KEY], 1_700_000_000)
    for bad_header, now, keys, reason in [
        (None, 1_700_000_000, [KEY], "missing"),
        ("", 1_700_000_000, [KEY], "missing"),
        ("t=abc&s=00", 1_700_000_000, [KEY], "malformed"),
        ("s=" + "0" * 64, 1_700_000_000, [KEY], "malformed"),
        (header, 1_700_000_301, [KEY], "stale"),
        (header, 1_699_999_699, [KEY], "stale"),
        (header, 1_700_000_000, [], "no_key"),
        (header, 1_700_000_000, [OTHER, FALLBACK], "mismatch"),
    ]:
        with pytest.raises(SignatureError) as caught:
            verify(body, bad_header, keys, now)
        assert caught.value.reason == reason, (bad_header, reason)
    # A body re-serialized in transit still verifies when the signer signed its canonical form.
    canonical = canonical_json({"b": [1, 2], "a": "x"})
    verify(b'{ "b": [1, 2],\n "a": "x" }', sign(canonical, KEY, 1), [KEY], 1)


def test_signing_key_hash_and_bearer() -> None:
    assert hash_signing_key(KEY) == hashlib.sha256(bytes.fromhex("ab" * 32)).hexdigest()
    assert hash_signing_key("ab" * 32) == hash_signing_key(KEY)
    assert bearer(KEY) == f"Bearer {hash_signing_key(KEY)}"
    assert bearer_matches(bearer(KEY), [KEY])
    assert bearer_matches(f"Bearer signkey-prod-{hash_signing_key(KEY)}", [OTHER, KEY])  # JS SDK style
    assert not bearer_matches(bearer(KEY), [OTHER])
    assert not bearer_matches(None, [KEY]) and not bearer_matches("Basic x", [KEY])
    with pytest.raises(SigningKeyError):
        hash_signing_key("signkey-prod-xyz")


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "é\n"], "": {}}) == '{"":{},"a":[true,null,"é\\n"],"b":1}'.encode()
    # Keys sort by UTF-16 code units: U+1F600 (a surrogate pair, 0xD83D...) before U+FB01.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'.encode()
    numbers = {
        1.0: "1",
        -0.0: "0",
        0.5: "0.5",
        1e21: "1e+21",
        1e20: "100000000000000000000",
        1.5e-7: "1.5e-7",
        0.000001: "0.000001",
        123.456: "123.456",
        -2.5e-10: "-2.5e-10",
        5e-324: "5e-324",
        1.7976931348623157e308: "1.7976931348623157e+308",
    }
    for value, text in numbers.items():
        assert canonical_json(value) == text.encode(), value


def test_signing_agrees_with_the_official_inngest_sdk() -> None:
    net = pytest.importorskip("inngest._internal.net")
    transforms = pytest.importorskip("inngest._internal.transforms")
    server_lib = pytest.importorskip("inngest._internal.server_lib")
    jcs = pytest.importorskip("jcs")
    now = int(time.time())
    body = json.dumps({"event": {"name": "x", "data": {"k": [1, "two", None]}}, "ctx": {"run_id": "r"}}).encode()

    # Responses: the official SDK signs raw bytes exactly as we do.
    assert net.sign_response(body, KEY, now) == sign(body, KEY, now)
    # Requests: it signs the canonical form; we verify that, and it verifies ours.
    verify(body, net.sign_request(body, KEY, now), [KEY], now)
    ours = sign(canonical_json(json.loads(body)), KEY, now)
    assert net.sign_request(body, KEY, now) == ours
    checked = net.validate_request_sig(
        body=body,
        headers={"x-inngest-signature": ours},
        mode=server_lib.ServerKind.CLOUD,
        signing_key=OTHER,
        signing_key_fallback=KEY,
    )
    assert checked == KEY
    assert transforms.hash_signing_key(KEY) == hash_signing_key(KEY)
    assert transforms.hash_signing_key(FALLBACK) == hash_signing_key(FALLBACK)
    sample = {"z": {"é": "ü", "a": [1, 2, {"y": None, "b": False}]}, "A": "\u2028", "\U0001f600": 1, "\ufb01": 2}
    assert canonical_json(sample) == jcs.canonicalize(sample)


async def test_concurrent_requests_run_independently() -> None:
    async with asgi_client(dev_app()) as http:
        bodies = [call(ev=event(start=i), run_id=f"run-{i}") for i in range(20)]
        responses = await asyncio.gather(*(http.post(url("two-steps"), content=b) for b in bodies))
    assert [r.json()[0]["data"]["n"] for r in responses] == list(range(20))
