"""One invocation of a function with its middleware: how workers (in process) and served apps
(``stepq.serve``) both call the engine, so that middleware runs the same way on either path.

Without middleware this is ``stepq.engine.execute``. With it, the hooks run at the engine's edges:
``transform_input`` on copies of the request's events and on its memo before the function is called,
``transform_output`` on the engine's result, ``before_response`` last; the engine tells the rest
(when new code starts, when the function stops) through ``InvocationHooks``. The engine's decisions
stay its own: the hooks only change the data that goes in and comes out.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

from .client import validated_events
from .engine import ExecutionResult, FunctionFailed, FunctionReturned, execute, failure
from .errors import NonRetriableError, StepError, StepOutputError, error_payload
from .event import Event
from .function import Function
from .jsonvalue import NotJSONError, check_json
from .middleware import EMPTY, Output, StepMemos, TransformOutputResult, TransformOutputStepInfo
from .middleware_manager import MiddlewareManager, send_through, send_through_sync
from .opcodes import Op, Opcode
from .replay import ExecutionRequest, check_output


async def invoke(fn: Function, request: ExecutionRequest, *, raw_request: object = None) -> ExecutionResult:
    """Run ``fn`` once for ``request`` with the client's and the function's middleware.

    ``raw_request`` is what middleware gets as ``raw_request``: the HTTP request when served, None
    in a worker. Never raises for user or middleware errors: they fail the invocation.
    """
    try:
        manager = MiddlewareManager.of_function(fn, raw_request)
    except Exception as exc:  # a middleware that cannot start (EncryptionMiddleware without a key)
        return failure(exc)
    if manager is None:
        return await execute(fn, request)
    return await _Invocation(fn, request, manager).run()


class _Invocation:
    """The hooks of one invocation (``stepq.replay.InvocationHooks``) and the edges around it."""

    def __init__(self, fn: Function, request: ExecutionRequest, manager: MiddlewareManager) -> None:
        self.fn = fn
        self.manager = manager
        # Middleware may change event data in place: it gets copies, so that nothing the caller
        # holds (a worker caches runs' events) is changed.
        events = [_copied(e) for e in request.events]
        event = events[0] if request.events and request.event is request.events[0] else _copied(request.event)
        self.memos, self.shapes = _memos_of(request.steps, request.step_names)
        self.request = dataclasses.replace(request, event=event, events=events)

    async def run(self) -> ExecutionResult:
        fn = self.fn
        if fn.client is not None:
            # Steps send through this invocation's middleware (the client's and the function's).
            fn = dataclasses.replace(fn, client=_RequestClient(fn.client, self.manager))
        result = await execute(fn, self.request, self)
        try:
            result = await self._transform_output(result)
            await self.manager.before_response()
        except Exception as exc:
            return failure(exc)
        return result

    # -- InvocationHooks ---------------------------------------------------------------------------

    async def started(self, ctx: Any) -> None:
        self.manager.loop = asyncio.get_running_loop()
        await self.manager.transform_input(ctx, self.fn, self.memos)
        self.request.steps = _wire_memos(self.memos, self.shapes)
        await self.manager.before_memoization()

    async def new_code(self) -> None:
        await self.manager.after_memoization()
        await self.manager.before_execution()

    def new_code_sync(self) -> None:
        self.manager.after_memoization_sync()
        self.manager.before_execution_sync()

    async def stopped(self) -> None:
        await self.manager.after_execution()

    # -- transform_output --------------------------------------------------------------------------

    async def _transform_output(self, result: ExecutionResult) -> ExecutionResult:
        if isinstance(result, FunctionReturned):
            out = TransformOutputResult(error=None, output=result.value, step=None)
            await self.manager.transform_output(out)
            if out.error is not None:
                return _with_warnings(failure(out.error), result.warnings)
            result.value = self._checked(out.output)
            return result
        if isinstance(result, FunctionFailed):
            error = result.exception or _exception_of(result.error)
            out = TransformOutputResult(error=error, output=EMPTY, step=None)
            await self.manager.transform_output(out)
            if out.error is error:
                return result
            if out.error is None:
                value = self._checked(out.output) if out.has_output() else None
                return FunctionReturned(value, result.warnings)
            return _with_warnings(failure(out.error), result.warnings)
        if len(result.opcodes) != 1:
            return result  # several steps planned at once: no single output to transform (as inngest)
        await self._transform_step(result.opcodes[0])
        return result

    async def _transform_step(self, op: Opcode) -> None:
        error: Exception | None = None
        output: object = EMPTY
        if op.op is Op.STEP_RUN:
            output = op.data
        elif op.error is not None:
            error = _exception_of(op.error, op.step_id)
        out = TransformOutputResult(
            error=error, output=output, step=TransformOutputStepInfo(op.step_id, op.op, op.opts)
        )
        await self.manager.transform_output(out)
        if out.error is not error and out.error is not None:
            op.error = error_payload(out.error)
            if op.op is Op.STEP_RUN:
                # A value turned into an error: a retriable step error (the runtime makes it final
                # when the attempts are spent).
                op.op = Op.STEP_ERROR
                op.data = None
        elif op.op is Op.STEP_RUN and out.output is not op.data:
            what = f"middleware's transform_output for step {op.step_id!r} returned"
            try:
                op.data = check_output(None if out.output is EMPTY else out.output, self.request.max_output_bytes, what)
            except StepOutputError as exc:
                raise NonRetriableError(str(exc)) from None

    def _checked(self, value: object) -> Any:
        if value is EMPTY:
            return None
        try:
            return check_json(value, "output")
        except NotJSONError as exc:
            raise NonRetriableError(
                f"middleware's transform_output made function {self.fn.id!r} return a value that cannot be stored: "
                f"{exc}"
            ) from None


class _RequestClient:
    """The function's client as its steps see it in one invocation: ``step.send_event`` sends through
    the invocation's middleware (the client's and the function's), as in inngest-py."""

    def __init__(self, client: Any, manager: MiddlewareManager) -> None:
        self._client = client
        self._manager = manager

    async def send(self, events: Event | Sequence[Event]) -> list[str]:
        return await send_through(self._manager, self._client.transport, validated_events(events))

    def send_sync(self, events: Event | Sequence[Event]) -> list[str]:
        return send_through_sync(self._manager, self._client.transport, validated_events(events))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# -- memo shapes -----------------------------------------------------------------------------------

#: How a memo value was stored: ``{"data": v}``, ``{"error": e}``, or as it is (a waited-for event).
_DATA, _ERROR, _RAW = "data", "error", "raw"


def _memos_of(steps: Any, names: Any) -> tuple[StepMemos, dict[str, str]]:
    memos: dict[str, Output] = {}
    shapes: dict[str, str] = {}
    # Not copied (a run's memo grows with its steps, and every invocation passes here): hooks replace
    # ``output.data`` rather than change a memo value in place, as Inngest's middleware does.
    for key, value in steps.items():
        if type(value) is dict and len(value) == 1 and "data" in value:
            memos[key], shapes[key] = Output(data=value["data"]), _DATA
        elif type(value) is dict and len(value) == 1 and "error" in value:
            error = value["error"] if isinstance(value["error"], dict) else {"message": str(value["error"])}
            memos[key], shapes[key] = Output(error=error), _ERROR
        else:
            memos[key], shapes[key] = Output(data=value), _RAW
    return StepMemos(memos, dict(names)), shapes


def _wire_memos(memos: StepMemos, shapes: dict[str, str]) -> dict[str, Any]:
    wire: dict[str, Any] = {}
    for key, output in memos.items():
        shape = shapes.get(key, _DATA)
        if output.error is not None:
            wire[key] = {"error": output.error}
        elif shape == _RAW:
            wire[key] = output.data
        else:
            wire[key] = {"data": output.data}
    return wire


def _copied(event: Event) -> Event:
    return dataclasses.replace(event, data=copy.deepcopy(event.data), user=copy.deepcopy(event.user))


def _exception_of(error: dict[str, Any], step_id: str | None = None) -> Exception:
    """An error payload as an exception, for middleware that expects one."""
    return StepError(
        str(error.get("name") or "Error"),
        str(error.get("message") or ""),
        error.get("stack"),
        step_id=step_id or "",
    )


def _with_warnings(result: FunctionFailed, warnings: list[str]) -> FunctionFailed:
    result.warnings = [*warnings, *result.warnings]
    return result
