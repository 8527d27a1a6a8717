"""What an invocation's outcome does to its run: ``decide`` turns (job, loaded run, policy, checked
answer, now) into one ``Plan`` of writes. Pure: no Redis, no I/O, no clock but its ``now``.

The answer has been checked against the job (``stepq.runtime.answers.check_answer``), so every
opcode here is one the job may act on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stepq.durations import to_timedelta
from stepq.engine import ExecutionResult, FunctionFailed, FunctionReturned, StepsReported
from stepq.opcodes import Op, Opcode, memo_data, memo_error
from stepq.retry import Backoff

from . import waits
from .answers import wake_time
from .jobs import JobKind, JobSpec
from .plan import Commit, FanOut, Finish, Now, PendingStep, Plan, Policy, RaisedBy, Resolve, Retry, Sleep, Write
from .run_status import RunStatus

if TYPE_CHECKING:
    from .store import LoadedRun

#: Inngest's default for an invoke without a timeout.
DEFAULT_INVOKE_TIMEOUT = dt.timedelta(days=366)
INVOKE_TIMEOUT_ERROR = {
    "name": "InngestInvokeTimeoutError",
    "message": "Timed out waiting for invoked function to complete",
    "stack": "",
}
#: The longest error message kept in a step's bookkeeping.
MAX_ERROR_CHARS = 2000


def decide(
    job: JobSpec, run: LoadedRun, policy: Policy, result: ExecutionResult, now: Now, *, elapsed_ms: int = 0
) -> Plan:
    """The writes that make ``run`` reflect ``result``, the checked answer of ``job``'s invocation.

    ``elapsed_ms``: how long the invocation took (a step's recorded duration)."""
    if isinstance(result, FunctionReturned):
        end = Finish(RunStatus.COMPLETED, output=result.value)
        return _plan(job, run, now, end, warnings=tuple(result.warnings), elapsed_ms=elapsed_ms)
    if isinstance(result, FunctionFailed):
        failures = job.attempt + 1
        if result.retriable and failures < policy.max_attempts:
            delay = result.retry_after or policy.backoff.delay_drawn(failures, now.draw)
            # a planned step's retry is that step's: it must still be pending
            retry = _retry(job, run, now, delay, key=job.step_key or "", name="", error=result.error, executed=False)
            return _plan(job, run, now, retry, label="function-error-retry", elapsed_ms=elapsed_ms)
        if result.step is None:
            return _plan(job, run, now, Finish(RunStatus.FAILED, error=result.error), elapsed_ms=elapsed_ms)
        # a step's code raised a NonRetriableError: the run fails at once, recorded against the step
        raised = RaisedBy(result.step.key, result.step.name, job.attempt + 1, elapsed_ms, _error_text(result.error))
        end = Finish(RunStatus.FAILED, error=result.error, raised_by=raised)
        return _plan(job, run, now, end, step=result.step.name, elapsed_ms=elapsed_ms)
    ops = result.opcodes
    if len(ops) == 1 and ops[0].op in (Op.STEP_RUN, Op.STEP_FAILED, Op.STEP_ERROR):
        return _step_result(job, run, policy, ops[0], result, now, elapsed_ms)
    if len(ops) == 1 and ops[0].op is Op.SLEEP:
        op = ops[0]
        wake = JobSpec(run.run_id, run.position, kind=JobKind.WAKE, step_key=op.id)
        sleep = Sleep(op.id, op.step_id, wake, _epoch_ms(wake_time(op, now.utc)))
        return _plan(job, run, now, sleep, label="sleep", step=op.step_id, elapsed_ms=elapsed_ms)
    return _plan(
        job,
        run,
        now,
        _fan_out(run, ops, now),
        label=f"fan-out:{len(ops)}",
        step=",".join(o.step_id for o in ops),
        elapsed_ms=elapsed_ms,
    )


def finish(run: LoadedRun, end: Finish, now_ms: int) -> Plan:
    """End ``run`` under this invocation's claim (e.g. its function is not defined here)."""
    return Plan(run.run_id, run.queue_id, run.fence_field, run.fence, run.position, end, now_ms, label=end.status)


def give_up(run_id: str, error: Any, now_ms: int) -> Plan:
    """Fail a run whose job could not be advanced, whoever holds it (an unfenced write)."""
    return Plan(run_id, "", "", "", -1, Finish(RunStatus.FAILED, error=error), now_ms, label=RunStatus.FAILED)


def step_policy(op: Opcode, policy: Policy) -> Policy:
    """The policy of a failed step: its own when it set one (``step.run(..., retries=, backoff=)``,
    carried in the opcode's opts and checked by ``stepq.runtime.answers``), else the function's."""
    opts = op.opts or {}
    retries = opts.get("retries")
    max_attempts = retries + 1 if isinstance(retries, int) and not isinstance(retries, bool) else policy.max_attempts
    raw = opts.get("backoff")
    return Policy(max_attempts, Backoff.from_dict(raw) if isinstance(raw, dict) else policy.backoff)


def _step_result(
    job: JobSpec, run: LoadedRun, policy: Policy, op: Opcode, result: StepsReported, now: Now, elapsed_ms: int
) -> Plan:
    own = step_policy(op, policy)
    attempts = job.attempt + 1
    if op.op is Op.STEP_ERROR and (result.no_retry or attempts >= own.max_attempts):
        # The SDK asked for no retry, or the attempts are spent (an SDK may not have noticed): the
        # step failed for good, and its error is memoized like a StepFailed.
        op = dataclasses.replace(op, op=Op.STEP_FAILED)
    if op.op is Op.STEP_ERROR:
        delay = result.retry_after or own.backoff.delay_drawn(attempts, now.draw)
        retry = _retry(job, run, now, delay, key=op.id, name=op.step_id, error=op.error or {}, executed=True)
        return _plan(job, run, now, retry, label="step-error-retry", step=op.step_id, elapsed_ms=elapsed_ms)
    value = memo_data(op.data) if op.op is Op.STEP_RUN else memo_error(op.error or {})
    label = "step-ok" if op.op is Op.STEP_RUN else "step-failed"
    write: Write
    if job.kind is JobKind.PLANNED:
        write = Resolve(op.id, op.step_id, value, attempts, elapsed_ms)
    else:
        write = Commit(op.id, op.step_id, value, attempts, elapsed_ms, JobSpec(run.run_id, run.position + 1))
    return _plan(job, run, now, write, label=label, step=op.step_id, elapsed_ms=elapsed_ms)


def _retry(
    job: JobSpec,
    run: LoadedRun,
    now: Now,
    delay: dt.timedelta,
    *,
    key: str,
    name: str,
    error: dict[str, Any],
    executed: bool,
) -> Retry:
    """The attempt after ``job``'s failed one, ``delay`` from now: the same planned step, or a
    re-entry where the run stands now (a wake-up job's re-entry is one step further than the job)."""
    if job.kind is JobKind.PLANNED:
        again = dataclasses.replace(job, attempt=job.attempt + 1)
    else:
        again = JobSpec(run.run_id, run.position, job.attempt + 1)
    return Retry(again, now.ms + _ms(delay), key, name, job.attempt + 1, _error_text(error), executed)


def _error_text(error: dict[str, Any]) -> str:
    """A step's error as its bookkeeping keeps it: ``"Name: message"``, bounded."""
    return f"{error.get('name', 'Error')}: {error.get('message', '')}"[:MAX_ERROR_CHARS]


def _fan_out(run: LoadedRun, ops: Sequence[Opcode], now: Now) -> FanOut:
    """Steps reported together: each pending with the job that resolves it; re-enter once all are."""
    at = now.ms
    trigger = run.events[0].to_dict()
    pending: list[PendingStep] = []
    records: list[waits.WaitRecord] = []
    invoking = False
    for op in ops:
        # runtime.answers let through only these kinds here
        if op.op is Op.STEP_PLANNED:
            planned = JobSpec(run.run_id, run.position, kind=JobKind.PLANNED, step_key=op.id)
            pending.append(PendingStep(op.id, op.step_id, planned, at))
        elif op.op is Op.SLEEP:
            timer = JobSpec(run.run_id, run.position, kind=JobKind.TIMER, step_key=op.id)
            pending.append(PendingStep(op.id, op.step_id, timer, _epoch_ms(wake_time(op, now.utc))))
        elif op.op is Op.WAIT_FOR_EVENT:
            opts = op.opts or {}
            due = at + _ms(to_timedelta(opts.get("timeout") or "0s"))
            record = waits.WaitRecord(
                run.run_id, op.id, waits.KIND_WAIT, str(opts.get("event") or op.name), opts.get("if"), due
            )
            record, registration = waits.plan(record, trigger)
            records.append(record)
            timer = JobSpec(run.run_id, run.position, kind=JobKind.TIMER, step_key=op.id)
            pending.append(PendingStep(op.id, op.step_id, timer, due, registration))
        elif op.op is Op.INVOKE_FUNCTION:
            opts = op.opts or {}
            timeout = to_timedelta(opts["timeout"]) if opts.get("timeout") else DEFAULT_INVOKE_TIMEOUT
            timer = JobSpec(
                run.run_id, run.position, kind=JobKind.TIMER, step_key=op.id, value=memo_error(INVOKE_TIMEOUT_ERROR)
            )
            # The child is created by a job queued with the fan-out, so a crash right after the
            # fan-out cannot leave the step waiting for a child that was never started.
            child = {"function_id": opts["function_id"], "payload": opts.get("payload") or {}, "name": op.step_id}
            start = JobSpec(run.run_id, run.position, kind=JobKind.INVOKE, step_key=op.id, value=child)
            pending.append(PendingStep(op.id, op.step_id, timer, at + _ms(timeout), start=start))
            invoking = True
    if records or invoking:
        status = RunStatus.WAITING
    elif all(o.op is Op.SLEEP for o in ops):
        status = RunStatus.SLEEPING
    else:
        status = RunStatus.RUNNING
    join = JobSpec(run.run_id, run.position + len(ops))
    return FanOut(tuple(pending), join, status, force_plan=len(ops) > 1, waits=tuple(records))


def _plan(
    job: JobSpec,
    run: LoadedRun,
    now: Now,
    write: Write,
    *,
    label: str = "",
    step: str | None = None,
    warnings: tuple[str, ...] = (),
    elapsed_ms: int = 0,
) -> Plan:
    # A finish is never nudged: its refusals all mean the run is in other hands or over.
    nudge = "" if isinstance(write, Finish) else job.job_id
    if isinstance(write, Finish) and not label:
        label = write.status
    return Plan(
        run.run_id,
        run.queue_id,
        run.fence_field,
        run.fence,
        run.position,
        write,
        now.ms,
        nudge=nudge,
        label=label,
        step=step,
        warnings=warnings,
        attempt=job.attempt + 1,
        started_ms=now.ms - elapsed_ms,
    )


def _ms(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _epoch_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)
