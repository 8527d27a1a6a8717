"""``POST``: run a function once (``stepq.invocation.invoke``: the engine, with the function's
middleware) with the call's event(s), memo and context, and answer 206 with opcodes, 200 with the
return value, or 500 with ``{name, message, stack}``; ``probe=trust`` answers an empty 200 (after
the handler checked the signature)."""

from __future__ import annotations

import datetime as dt
import math

import structlog

from ..engine import ExecutionResult, FunctionFailed, FunctionReturned, StepsReported
from ..function import Function
from ..invocation import invoke
from ..replay import ExecutionRequest
from .api_client import ApiClient
from .call import parse_call, wire_event
from .messages import HandlerRequest, HandlerResponse, Refusal, dumps
from .served_functions import ServedFunctions

log = structlog.get_logger("stepq.serve")

#: The ``stepId`` of a call that starts from the top rather than targeting a planned step.
DISCOVERY_STEP = "step"


def _seconds(delta: dt.timedelta) -> str:
    """``Retry-After`` as whole seconds, rounded up, at least 1 (the executor's floor)."""
    return str(max(1, math.ceil(delta.total_seconds())))


async def answer_call(functions: ServedFunctions, api: ApiClient, request: HandlerRequest) -> HandlerResponse:
    """Answer a POST: a trust probe, or one call of a function."""
    probe = request.query.get("probe")
    if probe:
        if probe != "trust":
            raise Refusal(500, "unsupported_probe", f"unsupported probe {probe!r}")
        return HandlerResponse(200, b"null")
    fn_id = request.query.get("fnId")
    if not fn_id:
        raise Refusal(500, "query_param_missing", "the fnId query parameter is missing")
    fn = functions.find(fn_id)
    step_id = request.query.get("stepId") or DISCOVERY_STEP
    call = parse_call(request.body)
    if call.use_api:
        call.events, call.steps = await api.run_state(call.run_id)
    events = [wire_event(raw, f"events[{i}]") for i, raw in enumerate(call.events or [])]
    if call.event is not None:
        event = wire_event(call.event, "event")
    elif events:
        event = events[0]
    else:
        raise Refusal(500, "malformed_request", "the request carries no event")
    execution = ExecutionRequest(
        event=event,
        events=events or [event],
        steps=call.steps,
        run_id=call.run_id,
        attempt=call.attempt,
        stack=call.stack,
        target_step=None if step_id == DISCOVERY_STEP else step_id,
        disable_immediate_execution=call.disable_immediate_execution,
    )
    fn = functions.with_max_attempts(fn, call.max_attempts)
    result = await invoke(fn, execution, raw_request=request)
    return result_response(fn, call.run_id, result)


def result_response(fn: Function, run_id: str, result: ExecutionResult) -> HandlerResponse:
    """The answer that tells the executor what the call did."""
    for warning in result.warnings:
        log.warning("serve.function_warning", function=fn.slug, run_id=run_id, warning=warning)
    if isinstance(result, StepsReported):
        headers = {"X-Inngest-No-Retry": "false"}
        if result.retry_after is not None:
            headers["Retry-After"] = _seconds(result.retry_after)
        return HandlerResponse(206, dumps([op.to_dict() for op in result.opcodes]), headers)
    if isinstance(result, FunctionReturned):
        return HandlerResponse(200, dumps(result.value))
    assert isinstance(result, FunctionFailed)
    error = {
        "name": str(result.error.get("name") or "Error"),
        "message": str(result.error.get("message") or ""),
        "stack": str(result.error.get("stack") or ""),
    }
    headers = {"X-Inngest-No-Retry": "false" if result.retriable else "true"}
    if result.retry_after is not None and result.retriable:
        headers["Retry-After"] = _seconds(result.retry_after)
    log.info("serve.function_failed", function=fn.slug, run_id=run_id, error=error["name"], retriable=result.retriable)
    return HandlerResponse(500, dumps(error), headers)
