"""Middleware that records every hook call, on the client and on functions, sync and async.

Each call is appended to the file named by ``MW_LOG`` as a JSON line ``[run_id, label, hook, detail]``
(``run_id`` is null for a send outside a run), so that a test can read the order in which a worker
(or a served app) called them. ``roundtrip`` has a middleware that wraps outputs on the way out and
unwraps them on the way in: the function only works if both directions ran.
"""

from __future__ import annotations

import json
import os
from typing import Any

import stepq
from stepq.middleware import (
    Middleware,
    MiddlewareSync,
    SendEventsResult,
    StepMemos,
    TransformOutputResult,
)

LOG_ENV = "MW_LOG"


def _write(run_id: str | None, label: str, hook: str, detail: str = "") -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps([run_id, label, hook, detail]) + "\n")


def _output_detail(result: TransformOutputResult) -> str:
    step = f"{result.step.id}/{result.step.op.value}" if result.step is not None else "function"
    output = json.dumps(result.output) if result.has_output() else "-"
    error = type(result.error).__name__ if result.error is not None else "-"
    return f"{step} output={output} error={error}"


class SyncRecorder(MiddlewareSync):
    label = "sync"

    def __init__(self, client: Any, raw_request: object) -> None:
        super().__init__(client, raw_request)
        self.run_id: str | None = None

    def _log(self, hook: str, detail: str = "") -> None:
        _write(self.run_id, self.label, hook, detail)

    def transform_input(self, ctx: Any, function: Any, steps: StepMemos) -> None:
        self.run_id = ctx.run_id
        raw = type(self.raw_request).__name__
        self._log("transform_input", f"{type(ctx).__name__} {function.id} steps={steps.size} raw={raw}")

    def before_memoization(self) -> None:
        self._log("before_memoization")

    def after_memoization(self) -> None:
        self._log("after_memoization")

    def before_execution(self) -> None:
        self._log("before_execution")

    def after_execution(self) -> None:
        self._log("after_execution")

    def transform_output(self, result: TransformOutputResult) -> None:
        self._log("transform_output", _output_detail(result))

    def before_response(self) -> None:
        self._log("before_response")

    def before_send_events(self, events: list[stepq.Event]) -> None:
        self._log("before_send_events", ",".join(e.name for e in events))

    def after_send_events(self, result: SendEventsResult) -> None:
        self._log("after_send_events", f"ids={len(result.ids)}")


class AsyncRecorder(Middleware):
    label = "async"

    def __init__(self, client: Any, raw_request: object) -> None:
        super().__init__(client, raw_request)
        self.run_id: str | None = None

    def _log(self, hook: str, detail: str = "") -> None:
        _write(self.run_id, self.label, hook, detail)

    async def transform_input(self, ctx: Any, function: Any, steps: StepMemos) -> None:
        self.run_id = ctx.run_id
        raw = type(self.raw_request).__name__
        self._log("transform_input", f"{type(ctx).__name__} {function.id} steps={steps.size} raw={raw}")

    async def before_memoization(self) -> None:
        self._log("before_memoization")

    async def after_memoization(self) -> None:
        self._log("after_memoization")

    async def before_execution(self) -> None:
        self._log("before_execution")

    async def after_execution(self) -> None:
        self._log("after_execution")

    async def transform_output(self, result: TransformOutputResult) -> None:
        self._log("transform_output", _output_detail(result))

    async def before_response(self) -> None:
        self._log("before_response")

    async def before_send_events(self, events: list[stepq.Event]) -> None:
        self._log("before_send_events", ",".join(e.name for e in events))

    async def after_send_events(self, result: SendEventsResult) -> None:
        self._log("after_send_events", f"ids={len(result.ids)}")


class ClientSync(SyncRecorder):
    label = "client-sync"


class ClientAsync(AsyncRecorder):
    label = "client-async"


class FnAsync(AsyncRecorder):
    label = "fn-async"


class FnSync(SyncRecorder):
    label = "fn-sync"


class Wrapping(MiddlewareSync):
    """Stores every output as ``{"wrapped": value}`` and gives the function the value back."""

    def transform_input(self, ctx: Any, function: Any, steps: StepMemos) -> None:
        for output in steps.values():
            if isinstance(output.data, dict) and set(output.data) == {"wrapped"}:
                output.data = output.data["wrapped"]

    def transform_output(self, result: TransformOutputResult) -> None:
        if result.has_output():
            result.output = {"wrapped": result.output}


class Refuse(MiddlewareSync):
    """Lets the first invocation run, then stops the next one when its replay ends (inside user code)."""

    def transform_input(self, ctx: Any, function: Any, steps: StepMemos) -> None:
        self.replaying = steps.size > 0

    def before_execution(self) -> None:
        if self.replaying:
            raise stepq.NonRetriableError("refused by middleware")


client = stepq.Client("mw-hooks", middleware=[ClientSync, ClientAsync])


@client.create_function(
    id="hooks-async",
    trigger=stepq.TriggerEvent(event="mw/hooks-async"),
    middleware=[FnAsync, FnSync],
    retries=0,
)
async def hooks_async(ctx: stepq.Context) -> dict[str, Any]:
    a = await ctx.step.run("a", lambda: 1)
    await ctx.step.send_event("send", stepq.Event(name="mw/nobody-listens"))
    return {"a": a}


@client.create_function(
    id="hooks-sync",
    trigger=stepq.TriggerEvent(event="mw/hooks-sync"),
    middleware=[FnAsync, FnSync],
    retries=0,
)
def hooks_sync(ctx: stepq.ContextSync) -> dict[str, Any]:
    a = ctx.step.run("a", lambda: 1)
    ctx.step.send_event("send", stepq.Event(name="mw/nobody-listens"))
    return {"a": a}


@client.create_function(
    id="roundtrip",
    trigger=stepq.TriggerEvent(event="mw/roundtrip"),
    middleware=[Wrapping],
    retries=0,
)
async def roundtrip(ctx: stepq.Context) -> int:
    a: int = await ctx.step.run("a", lambda: 20)
    b: int = await ctx.step.run("b", lambda: a + 1)
    return a + b  # a TypeError (dict + dict) unless the memo was unwrapped


@client.create_function(
    id="refused",
    trigger=stepq.TriggerEvent(event="mw/refused"),
    middleware=[Refuse],
    retries=2,
)
async def refused(ctx: stepq.Context) -> str:
    try:
        first: str = await ctx.step.run("first", lambda: "ran")
    except Exception:
        return "the hook's error was swallowed"  # must not happen: a hook's error is not the code's
    return first
