"""Does an invocation's answer fit the job that asked for it? Pure: no Redis, no clock but its input.

A worker asks a function for one thing: the next step of a run (a discovery), or one planned step
(``stepId=<key>``). What comes back, from stepq's engine or from an app served over HTTP, is checked
here before anything is written, so that a wrong answer fails the attempt with an error naming what
was asked and what came back, instead of reaching the run's state:

- a planned step's job accepts only that step's result (``StepRun``/``StepError``/``StepFailed``
  with the asked-for id);
- a discovery accepts only steps the run has not memoized, each once;
- every opcode is checked field by field (durations, expressions, ids, JSON values, retry
  policies), so a malformed one fails the run at once with what the app sent wrong;
- the limits hold on every path: steps per run, bytes per step output, bytes of a return value.

``check_answer`` returns the answer to apply (possibly a step turned into a ``StepFailed`` for an
oversized output, as the engine does in-process) or a ``FunctionFailed`` saying why not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Container
from typing import Any

from stepq.durations import parse_duration, parse_iso
from stepq.engine import ExecutionResult, FunctionFailed, FunctionReturned, StepsReported
from stepq.errors import OutputTooLarge, StepOutputError, error_payload
from stepq.expressions import ExpressionError, compile_expression
from stepq.opcodes import Op, Opcode
from stepq.replay import check_output
from stepq.retry import Backoff
from stepq.step import MAX_SLEEP

from .jobs import JobKind, JobSpec
from .limits import Limits

#: Longest step key or step id accepted from an app (Inngest's keys are 40 hex characters).
MAX_ID_CHARS = 1024
#: Highest per-step retry count an opcode may ask for (Inngest's maximum).
MAX_STEP_RETRIES = 20
STEP_RESULTS = (Op.STEP_RUN, Op.STEP_ERROR, Op.STEP_FAILED)
#: Largest error or invoke payload an opcode may carry (the event API's own limit for an event).
MAX_VALUE_BYTES = 512 * 1024


class InvalidOpcode(ValueError):
    """An opcode an app sent cannot be acted on; the message says which field and why."""


def limit_exceeded(message: str) -> dict[str, Any]:
    """The error a run fails with when it would break one of its limits."""
    return {"name": "LimitExceeded", "message": message, "stack": ""}


def check_answer(
    result: ExecutionResult, *, job: JobSpec, memoized: Container[str], position: int, limits: Limits
) -> ExecutionResult:
    """The answer to apply for ``job``, or a ``FunctionFailed`` saying why it cannot be applied.

    ``memoized``: the run's memoized step keys; ``position``: how many steps the run has done.
    """
    if isinstance(result, FunctionFailed):
        step = result.step
        if step is not None and (step.key in memoized or (job.kind is JobKind.PLANNED and step.key != job.step_key)):
            # not a step this job could have run: the failure stands, as the function's own
            return dataclasses.replace(result, step=None)
        return result
    if isinstance(result, FunctionReturned):
        return _check_return(result, job, limits)
    try:
        for op in result.opcodes:
            validate_opcode(op)
    except InvalidOpcode as exc:
        return _invalid("InvalidOpcode", str(exc))
    ops = result.opcodes
    if job.kind is JobKind.PLANNED:
        return _check_planned(result, job, limits)
    keys = [op.id for op in ops]
    repeated = next((op for op in ops if op.id in memoized or keys.count(op.id) > 1), None)
    if repeated is not None:
        where = "is already memoized" if repeated.id in memoized else "appears twice in one answer"
        return _wrong_answer(f"the answer reports step {_name(repeated)} again, but it {where}")
    if len(ops) > 1 and any(op.op in STEP_RESULTS for op in ops):
        listed = ", ".join(f"{op.op.value} {_name(op)}" for op in ops)
        return _invalid("InvalidOpcode", f"a step result must be the only opcode of an answer, got {listed}")
    if position + len(ops) > limits.max_steps:
        return FunctionFailed(
            limit_exceeded(
                f"run reached the limit of {limits.max_steps} steps (STEPQ_MAX_STEPS) at step {_name(ops[0])}: "
                f"{position} done, {len(ops)} more asked for"
            ),
            retriable=False,
        )
    if len(ops) == 1 and ops[0].op is Op.STEP_RUN:
        return _with_bounded_output(result, limits)
    return result


def _check_return(result: FunctionReturned, job: JobSpec, limits: Limits) -> ExecutionResult:
    if job.kind is JobKind.PLANNED:
        return _wrong_answer(f"asked to run planned step {job.step_key}, got the function's return value")
    try:
        value = check_output(result.value, limits.max_output_bytes, "the function returned")
    except StepOutputError as exc:
        return FunctionFailed(error_payload(exc) | {"stack": ""}, retriable=False)
    return dataclasses.replace(result, value=value)


def _check_planned(result: StepsReported, job: JobSpec, limits: Limits) -> ExecutionResult:
    ops = result.opcodes
    if len(ops) == 1 and ops[0].op in STEP_RESULTS and ops[0].id == job.step_key:
        return _with_bounded_output(result, limits) if ops[0].op is Op.STEP_RUN else result
    answered = ", ".join(f"{op.op.value} for step {_name(op)}" for op in ops) or "no opcode"
    return _wrong_answer(f"asked to run planned step {job.step_key} (stepId), the answer was {answered}")


def _with_bounded_output(result: StepsReported, limits: Limits) -> ExecutionResult:
    """A single StepRun whose data can be stored, or: the step failed for good with OutputTooLarge
    when it is too big (as the engine fails it in-process: user code sees a StepError there), and
    the run fails at once when it is not a JSON value at all (an app sent NaN, a 65-bit integer...)."""
    [op] = result.opcodes
    try:
        data = check_output(op.data, limits.max_output_bytes, f"step {op.step_id!r} returned")
    except OutputTooLarge as exc:
        failed = dataclasses.replace(op, op=Op.STEP_FAILED, data=None, error=error_payload(exc) | {"stack": ""})
        return dataclasses.replace(result, opcodes=[failed])
    except StepOutputError as exc:
        return _invalid("InvalidOpcode", f"StepRun opcode for step {_name(op)}: {exc}")
    if data is op.data:
        return result  # stored as it is (a scalar): no copies to make
    return dataclasses.replace(result, opcodes=[dataclasses.replace(op, data=data)])


def _name(op: Opcode) -> str:
    return f"{op.step_id!r} ({op.id})" if op.step_id and op.step_id != op.id else repr(op.id)


def _wrong_answer(message: str) -> FunctionFailed:
    """The answer does not fit what was asked: this attempt failed, and is retried."""
    return FunctionFailed({"name": "InvalidAnswer", "message": message, "stack": ""}, retriable=True)


def _invalid(name: str, message: str) -> FunctionFailed:
    """The app sent something that can never be acted on: the run fails at once."""
    return FunctionFailed({"name": name, "message": message, "stack": ""}, retriable=False)


# -- opcodes, field by field ---------------------------------------------------------------------


def validate_opcode(op: Opcode) -> None:
    """Raise InvalidOpcode naming the step and the field an app got wrong."""
    what = f"{op.op.value} opcode"
    _check_id(op.id, f"{what}: id")
    _check_id(op.step_id, f"{what} {op.id!r}: displayName", allow_empty=True)
    where = f"{what} for step {_name(op)}"
    if op.index is not None and (isinstance(op.index, bool) or not isinstance(op.index, int) or op.index < 0):
        raise InvalidOpcode(f"{where}: userland.index must be a non-negative integer, got {op.index!r}")
    if op.opts is not None and not isinstance(op.opts, dict):
        raise InvalidOpcode(f"{where}: opts must be an object, got {_kind(op.opts)}")
    opts = op.opts or {}
    # A StepRun's data is checked (and bounded) by check_answer, the one place that stores it.
    if op.op in (Op.STEP_ERROR, Op.STEP_FAILED):
        _check_error(op.error, f"{where}: error")
        _check_policy(opts, where)
    elif op.op is Op.SLEEP:
        wake_time(op, dt.datetime.now(dt.UTC))
    elif op.op is Op.WAIT_FOR_EVENT:
        event = opts.get("event") or op.name
        if not isinstance(event, str) or not event.strip() or len(event) > MAX_ID_CHARS:
            raise InvalidOpcode(f"{where}: opts.event must name the event to wait for, got {event!r}")
        _duration(opts.get("timeout", "0s"), f"{where}: opts.timeout", MAX_SLEEP)
        condition = opts.get("if")
        if condition is not None and condition != "":
            if not isinstance(condition, str):
                raise InvalidOpcode(f"{where}: opts.if must be a CEL expression string, got {_kind(condition)}")
            try:
                compile_expression(condition, variables={"event", "async"})
            except ExpressionError as exc:
                raise InvalidOpcode(f"{where}: opts.if: {exc}") from None
    elif op.op is Op.INVOKE_FUNCTION:
        function_id = opts.get("function_id")
        if not isinstance(function_id, str) or not function_id or len(function_id) > MAX_ID_CHARS:
            raise InvalidOpcode(f"{where}: opts.function_id must name the function to invoke, got {function_id!r}")
        payload = opts.get("payload", {})
        if not isinstance(payload, dict) or not isinstance(payload.get("data", {}), dict):
            raise InvalidOpcode(f"{where}: opts.payload must be an object with an object 'data'")
        if payload.get("v") is not None and not isinstance(payload["v"], str):
            raise InvalidOpcode(f"{where}: opts.payload.v must be a string, got {_kind(payload['v'])}")
        _check_value(payload.get("data", {}), f"{where}: opts.payload.data")
        if opts.get("timeout"):
            _duration(opts["timeout"], f"{where}: opts.timeout", None)
    elif op.op not in (Op.STEP_PLANNED, Op.STEP_RUN):
        raise InvalidOpcode(f"{where}: stepq cannot act on {op.op.value} opcodes")


def wake_time(op: Opcode, now: dt.datetime) -> dt.datetime:
    """A Sleep opcode's wake-up time: its duration from ``now`` or its ISO date; InvalidOpcode when
    neither parses or it lies more than 366 days ahead."""
    where = f"Sleep opcode for step {_name(op)}"
    spec = (op.opts or {}).get("duration") or op.name or ""
    if not isinstance(spec, str) or not spec:
        raise InvalidOpcode(f"{where}: opts.duration (or name) must be a duration or an ISO date, got {spec!r}")
    if spec[:1].isdigit() and ("T" in spec or "-" in spec):
        try:
            moment = parse_iso(spec)
        except (ValueError, OverflowError):
            raise InvalidOpcode(f"{where}: {spec!r} is not an ISO 8601 date") from None
        if moment - now > MAX_SLEEP:
            raise InvalidOpcode(f"{where}: {spec!r} is more than {MAX_SLEEP.days} days ahead")
        return moment
    return now + _duration(spec, f"{where}: opts.duration", MAX_SLEEP)


def _duration(value: Any, what: str, maximum: dt.timedelta | None) -> dt.timedelta:
    if isinstance(value, str) and value == "":
        return dt.timedelta(0)  # Inngest: an empty timeout expires at once
    if not isinstance(value, str):  # Inngest's wire carries duration strings; a bare number is ambiguous
        raise InvalidOpcode(f"{what}: expected a duration like '30s', got {_kind(value)}")
    try:
        delta = parse_duration(value, what=what)
    except (ValueError, OverflowError) as exc:
        raise InvalidOpcode(str(exc) if isinstance(exc, ValueError) else f"{what}: {value!r} is too long") from None
    if maximum is not None and delta > maximum:
        raise InvalidOpcode(f"{what}: {value!r} is over the limit of {maximum.days} days")
    return delta


def _check_id(value: Any, what: str, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidOpcode(f"{what}: expected a non-empty string, got {value!r}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidOpcode(f"{what}: {len(value)} characters, over the limit of {MAX_ID_CHARS}")
    if not _encodable(value):
        raise InvalidOpcode(f"{what}: not valid UTF-8 text (a lone surrogate?)")


def _check_value(value: Any, what: str) -> None:
    try:
        check_output(value, MAX_VALUE_BYTES, f"{what} is")
    except StepOutputError as exc:
        raise InvalidOpcode(str(exc)) from None


def _check_error(error: Any, what: str) -> None:
    if not isinstance(error, dict):
        raise InvalidOpcode(f"{what}: expected an object with name and message, got {_kind(error)}")
    for field in ("name", "message", "stack"):
        if error.get(field) is not None and not isinstance(error[field], str):
            raise InvalidOpcode(f"{what}.{field}: expected a string, got {_kind(error[field])}")
    _check_value(error, what)


def _check_policy(opts: dict[str, Any], where: str) -> None:
    """A step's own retry policy (stepq's ``step.run(..., retries=, backoff=)``), if it sent one."""
    retries = opts.get("retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_STEP_RETRIES
    ):
        raise InvalidOpcode(f"{where}: opts.retries must be an integer from 0 to {MAX_STEP_RETRIES}, got {retries!r}")
    backoff = opts.get("backoff")
    if backoff is None:
        return
    if not isinstance(backoff, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in backoff.values()
    ):
        raise InvalidOpcode(f"{where}: opts.backoff must be an object of finite numbers, got {backoff!r}")
    try:
        Backoff.from_dict(backoff)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidOpcode(f"{where}: opts.backoff: {exc}") from None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
