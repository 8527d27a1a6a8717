"""An app that serves functions over HTTP and answers badly, on purpose (Starlette, under uvicorn).

``POST /api/inngest?fnId=badapp-<name>`` answers as behaviour ``<name>`` says: not JSON, a 404
without the SDK header, a 418 with it, a 2xx without it, a 30 s hang, a body over 8 MiB,
``Retry-After``, ``X-Inngest-No-Retry``, a step error... ``good`` speaks the protocol properly:
one ``StepRun`` named ``work``, then the return value.

``GET /calls?fn=<name>`` lists the calls a function received: when (unix s), its ``ctx.attempt``,
the ``stepId`` query parameter and the memoized step keys the request carried.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

APP_ID = "badapp"
SDK = {"X-Inngest-SDK": "stepq-tests:v0"}
NO_RETRY = {"X-Inngest-No-Retry": "true"}
STEP = "work"
STEP_KEY = hashlib.sha1(STEP.encode()).hexdigest()
MiB = 1024 * 1024

calls: dict[str, list[dict[str, Any]]] = defaultdict(list)

Behaviour = Callable[[dict[str, Any], int], Awaitable[Response]]


def step_error(message: str) -> dict[str, Any]:
    return {
        "op": "StepError",
        "id": STEP_KEY,
        "name": STEP,
        "displayName": STEP,
        "error": {"name": "FlakyError", "message": message, "stack": ""},
        "userland": {"id": STEP},
    }


def memo_or_none(body: dict[str, Any]) -> Any:
    return (body.get("steps") or {}).get(STEP_KEY)


async def not_json(body: dict[str, Any], n: int) -> Response:
    return Response("<html><body>Internal proxy page</body></html>", 200, headers=SDK, media_type="text/html")


async def not_found(body: dict[str, Any], n: int) -> Response:
    return Response("Not Found", 404, media_type="text/plain")


async def teapot(body: dict[str, Any], n: int) -> Response:
    return JSONResponse({"name": "Teapot", "message": "I am a teapot"}, 418, headers=SDK)


async def no_sdk(body: dict[str, Any], n: int) -> Response:
    return JSONResponse({"looks": "fine"}, 200)


async def hang(body: dict[str, Any], n: int) -> Response:
    await asyncio.sleep(30)
    return JSONResponse("too late", 200, headers=SDK)


async def big(body: dict[str, Any], n: int) -> Response:
    return Response(b'"' + b"x" * (9 * MiB) + b'"', 200, headers=SDK, media_type="application/json")


def retry_after(value: Callable[[], str]) -> Behaviour:
    async def behaviour(body: dict[str, Any], n: int) -> Response:
        if n == 1:
            headers = {**SDK, "Retry-After": value()}
            return JSONResponse({"name": "Busy", "message": "come back later"}, 500, headers=headers)
        return JSONResponse("done", 200, headers=SDK)

    return behaviour


async def no_retry(body: dict[str, Any], n: int) -> Response:
    return JSONResponse({"name": "Fatal", "message": "do not retry this"}, 500, headers={**SDK, **NO_RETRY})


def failing_step(*, no_retry: bool) -> Behaviour:
    """A step that always fails; once its error is memoized, the function fails as an SDK's would
    when user code does not catch the ``StepError`` (500, not retried)."""

    async def behaviour(body: dict[str, Any], n: int) -> Response:
        memo = memo_or_none(body)
        if isinstance(memo, dict) and "error" in memo:
            error = memo["error"] or {}
            return JSONResponse(
                {"name": "StepError", "message": f"step {STEP!r} failed: {error.get('message')}"},
                500,
                headers={**SDK, **NO_RETRY},
            )
        if isinstance(memo, dict) and "data" in memo:
            return JSONResponse({"unexpected": memo}, 200, headers=SDK)
        headers = {**SDK, **NO_RETRY} if no_retry else SDK
        return JSONResponse([step_error("the step failed")], 206, headers=headers)

    return behaviour


async def good(body: dict[str, Any], n: int) -> Response:
    memo = memo_or_none(body)
    if memo is None:
        event = body.get("event") or {}
        data = {"n": (event.get("data") or {}).get("n")}
        op = {"op": "StepRun", "id": STEP_KEY, "name": STEP, "displayName": STEP, "data": data}
        return JSONResponse([op], 206, headers=SDK)
    return JSONResponse({"work": memo.get("data")}, 200, headers=SDK)


def _http_date(offset_s: float) -> str:
    return email.utils.formatdate(time.time() + offset_s, usegmt=True)


BEHAVIOURS: dict[str, Behaviour] = {
    "notjson": not_json,
    "notfound": not_found,
    "teapot": teapot,
    "nosdk": no_sdk,
    "hang": hang,
    "big": big,
    "retryafter0": retry_after(lambda: "0"),
    "retryafter3": retry_after(lambda: "3"),
    "retryafterpast": retry_after(lambda: _http_date(-3600)),
    "noretry": no_retry,
    "stepnoretry": failing_step(no_retry=True),
    "steperror": failing_step(no_retry=False),
    "good": good,
}


async def invoke(request: Request) -> Response:
    name = request.query_params.get("fnId", "").removeprefix(f"{APP_ID}-")
    behaviour = BEHAVIOURS.get(name)
    if behaviour is None:
        return JSONResponse({"name": "FunctionNotFound", "message": f"no function {name!r}"}, 500, headers=SDK)
    body = json.loads(await request.body())
    ctx = body.get("ctx") or {}
    calls[name].append(
        {
            "at": time.time(),
            "attempt": ctx.get("attempt"),
            "step_id": request.query_params.get("stepId"),
            "memo": sorted(body.get("steps") or {}),
        }
    )
    return await behaviour(body, len(calls[name]))


async def introspect(request: Request) -> Response:
    return JSONResponse({"functions": sorted(BEHAVIOURS)}, headers=SDK)


async def list_calls(request: Request) -> Response:
    return JSONResponse(calls.get(request.query_params.get("fn", ""), []))


app = Starlette(
    routes=[
        Route("/api/inngest", invoke, methods=["POST"]),
        Route("/api/inngest", introspect, methods=["GET"]),
        Route("/calls", list_calls, methods=["GET"]),
    ]
)
