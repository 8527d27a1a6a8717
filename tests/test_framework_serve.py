"""Issue 9: inngest-py's framework integrations, ``fast_api.serve`` and ``flask.serve``, on stepq.

An app written for Inngest serves its functions with ``inngest.fast_api.serve(app, client, [fn])``;
with ``import stepq.fast_api`` the same call adds stepq's protocol route to the FastAPI app. These
tests call the routes through the frameworks themselves (FastAPI under httpx's ASGI transport,
Flask's test client), in dev mode.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import fastapi
import flask
import httpx
import inngest
import inngest.fast_api
import inngest.flask
import pytest

import stepq
import stepq.fast_api
import stepq.flask
from tests.test_serve import FakeApi, LoopbackServer

client = stepq.Inngest(app_id="t-frameworks", is_production=False, api_base_url="http://127.0.0.1:9")


def shout(word: str) -> str:
    return word.upper()


@client.create_function(fn_id="shout", trigger=stepq.TriggerEvent(event="t/shout"))
async def shout_fn(ctx: stepq.Context) -> str:
    return await ctx.step.run("shout", shout, ctx.event.data["word"])


@client.create_function(fn_id="shout-sync", trigger=stepq.TriggerEvent(event="t/shout-sync"))
def shout_sync(ctx: stepq.ContextSync) -> str:
    return ctx.step.run("shout", shout, ctx.event.data["word"])


def call_body(word: str) -> bytes:
    """A first call of a run, as the executor sends it: no step done yet."""
    event = {"name": "t/shout", "data": {"word": word}, "id": "ev-1", "ts": 1, "user": {}}
    ctx = {"run_id": "01RUN", "attempt": 0, "stack": {"stack": [], "current": 0}, "use_api": False}
    return json.dumps({"event": event, "events": [event], "steps": {}, "ctx": ctx, "version": 2}).encode()


def test_signatures_are_inngest_pys() -> None:
    for ours, theirs in ((stepq.fast_api.serve, inngest.fast_api.serve), (stepq.flask.serve, inngest.flask.serve)):
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)


async def test_fast_api_serve_adds_the_protocol_route() -> None:
    app = fastapi.FastAPI()
    stepq.fast_api.serve(app, client, [shout_fn])

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
        described = await http.get("/api/inngest")
        called = await http.post("/api/inngest?fnId=t-frameworks-shout&stepId=step", content=call_body("hi"))
        elsewhere = await http.get("/api/other")

    assert described.status_code == 200, described.text
    assert described.json()["mode"] == "dev"
    assert described.json()["function_count"] == 1
    assert described.headers["x-inngest-framework"] == "fast_api"
    assert called.status_code == 206, called.text
    [opcode] = called.json()
    assert (opcode["op"], opcode["displayName"], opcode["data"]) == ("StepRun", "shout", "HI")
    assert elsewhere.status_code == 404


def test_flask_serve_adds_the_protocol_route() -> None:
    app = flask.Flask("t-frameworks")
    stepq.flask.serve(app, client, [shout_sync], serve_path="/api/jobs")

    with app.test_client() as http:
        described = http.get("/api/jobs")
        called = http.post("/api/jobs?fnId=t-frameworks-shout-sync&stepId=step", data=call_body("yo"))
        put_elsewhere = http.get("/api/inngest")

    assert described.status_code == 200, described.text
    assert described.get_json()["mode"] == "dev"
    assert described.headers["x-inngest-framework"] == "flask"
    assert called.status_code == 206, called.text
    [opcode] = called.get_json()
    assert (opcode["op"], opcode["data"]) == ("StepRun", "YO")
    assert put_elsewhere.status_code == 404


@pytest.mark.parametrize(
    ("option", "value"),
    [("enable_unauthed_sync", False), ("public_path", "/proxied/api/inngest"), ("streaming", "force")],
)
def test_options_stepq_lacks_are_refused_by_name(option: str, value: Any) -> None:
    with pytest.raises(stepq.FunctionConfigError, match=option):
        stepq.fast_api.serve(fastapi.FastAPI(), client, [shout_fn], **{option: value})
    if option != "streaming":
        with pytest.raises(stepq.FunctionConfigError, match=option):
            stepq.flask.serve(flask.Flask("t"), client, [shout_sync], **{option: value})


def test_options_that_ask_for_what_stepq_does_are_accepted() -> None:
    app = fastapi.FastAPI()
    stepq.fast_api.serve(app, client, [shout_fn], enable_unauthed_sync=True, streaming=inngest.Streaming.DISABLE)
    assert any(getattr(route, "path", None) == "/api/inngest" for route in app.routes)


async def test_a_sync_uses_the_clients_api_url_and_env() -> None:
    api = FakeApi()
    with LoopbackServer(api.app()) as server:
        branch = stepq.Inngest(app_id="t-frameworks-env", is_production=False, api_base_url=server.url, env="branch-7")

        @branch.create_function(fn_id="noop", trigger=stepq.TriggerEvent(event="t/noop"))
        async def noop(ctx: stepq.Context) -> None:
            return None

        app = fastapi.FastAPI()
        stepq.fast_api.serve(app, branch, [noop])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
            synced = await http.put("/api/inngest")

    assert synced.status_code == 200, synced.text
    [sent] = api.requests
    assert sent["path"] == "/fn/register"
    assert sent["headers"]["x-inngest-env"] == "branch-7"
    assert [f["id"] for f in sent["body"]["functions"]] == ["t-frameworks-env-noop"]
