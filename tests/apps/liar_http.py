"""An app served over HTTP whose answers do not fit what it was asked (Starlette, under uvicorn).

``POST /api/inngest?fnId=liar-<name>&stepId=...`` answers as behaviour ``<name>`` says:

- ``again``: runs step ``a``, then answers ``StepRun`` for ``a`` again although it is memoized;
- ``forge``: plans steps ``x`` and ``y``; asked for ``x`` (``stepId=<x's key>``) it answers with a
  result for ``y``; asked for ``y`` it answers honestly; returns ``{"x": .., "y": ..}`` once both are in;
- ``big``: runs step ``a`` with a string of ``event.data.bytes`` bytes; if ``a``'s error is
  memoized, fails as an SDK fails on an uncaught StepError; returns ``a``'s data otherwise;
- ``sleep-<variant>``, ``wait-<variant>``, ``invoke-<variant>``, ``data-<variant>``,
  ``error-<variant>``, ``retries-<variant>``, ``planned-<variant>``: one malformed opcode each
  (see ``MALFORMED``); the raw body is sent as written, so it may hold ``NaN`` or huge integers.

``GET /calls?fn=<name>`` lists the calls a function received (``stepId`` and the memo keys).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

APP_ID = "liar"
SDK = {"X-Inngest-SDK": "stepq-tests:v0"}
NO_RETRY = {"X-Inngest-No-Retry": "true"}


def key(step_id: str) -> str:
    return hashlib.sha1(step_id.encode()).hexdigest()


def op(kind: str, step_id: str, **fields: Any) -> dict[str, Any]:
    return {"op": kind, "id": key(step_id), "name": step_id, "displayName": step_id, **fields}


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status, headers={**SDK, **(headers or {})})


calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
Behaviour = Callable[[dict[str, Any], str], Awaitable[Response]]


async def again(body: dict[str, Any], step_id: str) -> Response:
    return answer(206, [op("StepRun", "a", data=1)])


async def forge(body: dict[str, Any], step_id: str) -> Response:
    memo = body.get("steps") or {}
    if step_id == "step":
        if key("x") in memo and key("y") in memo:
            return answer(200, {"x": memo[key("x")]["data"], "y": memo[key("y")]["data"]})
        return answer(206, [op("StepPlanned", "x"), op("StepPlanned", "y")])
    if step_id == key("x"):
        return answer(206, [op("StepRun", "y", data="forged by x's call")])
    return answer(206, [op("StepRun", "y", data="honest")])


async def big(body: dict[str, Any], step_id: str) -> Response:
    memo = (body.get("steps") or {}).get(key("a"))
    if isinstance(memo, dict) and "error" in memo:
        return answer(500, {"name": "StepError", "message": memo["error"].get("message")}, NO_RETRY)
    if isinstance(memo, dict):
        return answer(200, {"size": len(memo["data"])})
    size = int(body["event"]["data"]["bytes"])
    return answer(206, [op("StepRun", "a", data="x" * size)])


#: One malformed opcode per behaviour, as the raw JSON an app would send.
MALFORMED: dict[str, str] = {
    "sleep-huge": json.dumps([op("Sleep", "s", name="99999999999999d")]),
    "sleep-garbage": json.dumps([op("Sleep", "s", name="soon")]),
    "sleep-year": json.dumps([op("Sleep", "s", name="400d")]),
    "sleep-date": json.dumps([op("Sleep", "s", name="2026-13-45T99:00:00Z")]),
    "wait-timeout": json.dumps([op("WaitForEvent", "w", name="e/x", opts={"event": "e/x", "timeout": "-5s"})]),
    "wait-if": json.dumps([op("WaitForEvent", "w", name="e/x", opts={"event": "e/x", "timeout": "1m", "if": "a ==="})]),
    "wait-event": json.dumps([op("WaitForEvent", "w", opts={"event": 7, "timeout": "1m"})]),
    "invoke-function": json.dumps([op("InvokeFunction", "i", opts={"function_id": ["not", "a", "string"]})]),
    "invoke-timeout": json.dumps([op("InvokeFunction", "i", opts={"function_id": "liar-x", "timeout": 1e300})]),
    # Not JSON a well-behaved SDK would write: spliced in by hand.
    "data-nan": json.dumps([op("StepRun", "d", data="@")]).replace('"@"', "NaN"),
    "data-hugeint": json.dumps([op("StepRun", "d", data="@")]).replace('"@"', str(10**30)),
    "data-deep": json.dumps([op("StepRun", "d", data="@")]).replace('"@"', "[" * 700 + "]" * 700),
    "error-shape": json.dumps([op("StepError", "e", error=["not", "an", "object"])]),
    "retries-bad": json.dumps([op("StepError", "e", error={"name": "E", "message": "m"}, opts={"retries": 10**9})]),
    "opts-list": json.dumps([op("WaitForEvent", "w", opts=["event", "e/x"])]),
    "planned-twice": json.dumps([op("StepPlanned", "p"), op("StepPlanned", "p")]),
    "mixed": json.dumps([op("StepRun", "m", data=1), op("StepPlanned", "n")]),
}


def malformed(raw: str) -> Behaviour:
    async def behaviour(body: dict[str, Any], step_id: str) -> Response:
        return Response(raw, 206, headers=SDK, media_type="application/json")

    return behaviour


BEHAVIOURS: dict[str, Behaviour] = {
    "again": again,
    "forge": forge,
    "big": big,
    **{name: malformed(raw) for name, raw in MALFORMED.items()},
}


async def invoke(request: Request) -> Response:
    name = request.query_params.get("fnId", "").removeprefix(f"{APP_ID}-")
    behaviour = BEHAVIOURS.get(name)
    if behaviour is None:
        return answer(500, {"name": "FunctionNotFound", "message": f"no function {name!r}"})
    body = json.loads(await request.body())
    step_id = request.query_params.get("stepId", "step")
    calls[name].append({"step_id": step_id, "memo": sorted(body.get("steps") or {})})
    return await behaviour(body, step_id)


async def list_calls(request: Request) -> Response:
    return JSONResponse(calls.get(request.query_params.get("fn", ""), []))


app = Starlette(
    routes=[
        Route("/api/inngest", invoke, methods=["POST"]),
        Route("/calls", list_calls, methods=["GET"]),
    ]
)
