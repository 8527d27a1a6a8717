"""The job every worker runs: advance one run by one invocation, then apply what the function asked.

load (claim + memo) -> invoke (engine) -> check the answer -> apply (commit / schedule / fan out /
finish), each write one Lua script. Nothing here raises into arq but a request to try the job again
later: every failure is recorded on the run or logged, and while Redis is unreachable or in a
passing state (full, read-only, busy, loading) the job goes back to the queue and waits.

Every write that is refused leaves the run in someone's hands: a newer attempt holds it (``fenced``),
it ended (``done``), or, when the refusal says the run moved in a way this job did not expect
(``stale``, ``duplicate``), the run is nudged (``RunStore.nudge``) so that it has a job to go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from arq.worker import Retry

from stepq.durations import to_timedelta
from stepq.engine import ExecutionResult, FunctionFailed, FunctionReturned, StepsReported
from stepq.event import Event
from stepq.ids import new_ulid
from stepq.opcodes import Op, Opcode, memo_data, memo_error
from stepq.replay import ExecutionRequest
from stepq.retry import Backoff
from stepq.runtime import keys, lifecycle, matching, waits
from stepq.runtime.answers import check_answer, wake_time
from stepq.runtime.ingest import Ingest
from stepq.runtime.job_queue import ClaimedJob, JobEnded
from stepq.runtime.jobs import JobKind, JobSpec
from stepq.runtime.redis_errors import is_passing
from stepq.runtime.registry import Registry
from stepq.runtime.run_status import RunStatus
from stepq.runtime.store import (
    FENCE,
    CachedRun,
    Handoff,
    JobLease,
    LoadedRun,
    LoadRefused,
    Outcome,
    PendingStep,
    RunCache,
    RunStore,
    Written,
    now_ms,
)

from .faults import Faults
from .invoker import Invoker
from .remote import FunctionSource, RemoteFunction, Runnable

log = structlog.get_logger("stepq.worker")

#: A job that hits an unexpected internal error is retried this many times before its run fails.
INTERNAL_RETRIES = 5
#: Inngest's default for an invoke without a timeout.
DEFAULT_INVOKE_TIMEOUT = dt.timedelta(days=366)
INVOKE_TIMEOUT_ERROR = {
    "name": "InngestInvokeTimeoutError",
    "message": "Timed out waiting for invoked function to complete",
    "stack": "",
}
#: The outcome label of a write refused because a later load holds the run.
FENCED_SUFFIX = f"-refused:{Outcome.FENCED.value}"
#: How soon a job whose write was fenced runs again, to check the other delivery did its work.
FENCED_RECHECK_S = 1.0
#: Refusals that mean someone else has the run in hand (a newer attempt) or it is over.
OWNED_ELSEWHERE = (Outcome.FENCED, Outcome.DONE, Outcome.MISSING, Outcome.CANCELLED)


class Executor:
    """Advances runs of one app's functions."""

    def __init__(
        self, functions: FunctionSource, store: RunStore, invoker: Invoker, *, step_timeout_s: float = 2 * 3600
    ) -> None:
        self.functions = functions
        #: One invocation's limit, enforced here so that a timeout is a retriable step failure
        #: (arq's own job timeout, set longer, would fail the job for good and strand the run).
        self.step_timeout_s = step_timeout_s
        self.store = store
        self.invoker = invoker
        self.cache = RunCache()
        self.registry = Registry(store.redis, store.scripts)
        self.ingest = Ingest(store.redis, store, self.registry)
        #: Called when this worker enqueued a job due now (the worker then polls at once).
        self.on_next_job: Callable[[], None] = lambda: None
        #: Jobs sent back to the queue while Redis is unreachable or in a passing state.
        self.redis_faults = Faults("jobs")

    async def advance(self, ctx: dict[str, Any], payload: Any) -> JobEnded | None:
        """arq job entry point: ``payload`` is a JobSpec payload.

        A job never ends with its work undone: while Redis is unreachable or in a passing state it
        goes back to the queue (arq's ``Retry``) as often as needed; an unexpected error is retried
        a few times, then fails the run with an ``InternalError`` naming it.
        """
        tries = int(ctx.get("job_try", 1))
        try:
            ended = await self._advance(ctx, payload)
        except Retry:
            raise
        except Exception as exc:
            if is_passing(exc):
                # Logged once per kind of error while it lasts, not once per job.
                raise Retry(defer=self.redis_faults.failed(exc)) from exc
            log.exception("job.internal_error", job_id=ctx.get("job_id"), job_try=tries)
            if tries < INTERNAL_RETRIES:
                raise Retry(defer=min(2.0**tries, 30.0)) from exc
            try:
                await self._give_up(payload, exc)
            except Exception as again:
                log.error("job.give_up_failed", job_id=ctx.get("job_id"), error=f"{type(again).__name__}: {again}")
                raise Retry(defer=30.0) from again
        else:
            self.redis_faults.succeeded()
            return ended
        return None

    async def _give_up(self, payload: Any, exc: Exception) -> None:
        job = JobSpec.from_payload(payload)
        error = {"name": "InternalError", "message": f"stepq failed to advance the run: {exc!r}", "stack": ""}
        written = await self.store.finish(job.run_id, "", status=RunStatus.FAILED, error=error, fence_field="")
        if written.outcome is Outcome.OK:
            await lifecycle.run_ended(self.ingest, job.run_id, RunStatus.FAILED, error=error)
        await lifecycle.runs_failed(self.ingest, written.ended)

    async def _advance(self, ctx: dict[str, Any], payload: Any) -> JobEnded | None:
        started = time.perf_counter()
        try:
            job = JobSpec.from_payload(payload)
        except ValueError as exc:
            log.error("job.malformed", job_id=ctx.get("job_id"), error=str(exc))
            return None
        if job.kind is JobKind.TIMER:
            await self._fire_timer(job)
            return None
        if job.kind is JobKind.INVOKE:
            await self._start_child(job)
            return None
        if job.kind is JobKind.DEADLINE:
            cancelled = await lifecycle.cancel(
                self.ingest, job.run_id, "the run did not finish within its finish timeout"
            )
            log.info("run.deadline", run_id=job.run_id, outcome=cancelled.value)
            return None
        preload = ctx.get("preload")
        if isinstance(preload, LoadedRun) and (preload.run_id, preload.position) == (job.run_id, job.position):
            loaded: LoadedRun | LoadRefused = preload  # handed over with its claim: nothing to load
        else:
            loaded = await self.store.load(job, self.cache)
        if isinstance(loaded, LoadRefused):
            log.debug("job.skipped", run_id=job.run_id, reason=loaded.outcome.value, detail=loaded.detail)
            return None
        fn = await self.functions.get(loaded.fn_slug)
        if fn is None:
            await self._unknown_function(loaded)
            return None
        if loaded.first_start and fn.timeouts is not None and not await self._within_timeouts(fn, loaded):
            return None
        lease = None
        if "lease_token" in ctx and job.kind is JobKind.STEP:
            lease = JobLease(str(ctx["job_id"]), ctx["lease_token"], ctx["lease_ms"], bool(ctx.get("may_hand_off")))
        limits = fn.limits if isinstance(fn, RemoteFunction) else self.store.limits
        request = ExecutionRequest(
            event=loaded.events[0],
            events=loaded.events,
            steps=loaded.memo,
            run_id=loaded.run_id,
            attempt=job.attempt,
            stack=loaded.stack,
            target_step=job.step_key if job.kind is JobKind.PLANNED else None,
            # Inngest's protocol: after a fan-out, a served function plans its next step.
            disable_immediate_execution=loaded.force_plan and isinstance(fn, RemoteFunction),
            max_output_bytes=limits.max_output_bytes,
        )
        try:
            result = await asyncio.wait_for(self.invoker.invoke(fn, request), self.step_timeout_s)
        except TimeoutError:
            message = f"the invocation of {fn.slug} took longer than {self.step_timeout_s:g} s (STEPQ_STEP_TIMEOUT)"
            result = FunctionFailed({"name": "StepTimeout", "message": message, "stack": ""}, retriable=True)
        if isinstance(result, FunctionFailed) and result.divergence is not None:
            # Name the steps as the user wrote them (the engine knows only their keys).
            names = await self.store.step_names(loaded.run_id, [result.divergence.expected_key])
            result.error["message"] = result.divergence.message(fn.id, loaded.run_id, names)
        result = check_answer(result, job=job, memoized=loaded.memo, position=loaded.position, limits=limits)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        step, outcome, ended = await self._apply(job, loaded, fn, result, elapsed_ms, lease)
        log.info(
            "invocation",
            run_id=loaded.run_id,
            function=fn.slug,
            step=step,
            attempt=job.attempt,
            outcome=outcome,
            duration_ms=elapsed_ms,
        )
        if outcome.endswith(FENCED_SUFFIX):
            # A later load of this job's run holds it: most likely another delivery of this job,
            # which may since have died (its lease lapsed, or this worker took the lock back). Run
            # the job once more rather than end it: if the other delivery did the work, the re-run
            # finds the run moved on and does nothing.
            raise Retry(defer=FENCED_RECHECK_S)
        return ended

    async def _within_timeouts(self, fn: Runnable, run: LoadedRun) -> bool:
        """On a run's first start: cancel it if it started too late; set its finish deadline."""
        timeouts = fn.timeouts
        assert timeouts is not None
        if timeouts.start is not None:
            limit = to_timedelta(timeouts.start)
            if now_ms() - run.created_ms > limit.total_seconds() * 1000:
                reason = f"the run did not start within {timeouts.to_dict()['start']}"
                await lifecycle.cancel(self.ingest, run.run_id, reason)
                return False
        if timeouts.finish is not None:
            due = now_ms() + _ms(to_timedelta(timeouts.finish))
            await self.store.enqueue_for_run(
                run.run_id, run.queue_id, JobSpec(run.run_id, 0, kind=JobKind.DEADLINE), due
            )
        return True

    async def _fire_timer(self, job: JobSpec) -> None:
        """A pending step's timer: a wait or invoke timed out, or a sleep inside a fan-out ended."""
        assert job.step_key is not None
        written = await self.store.resolve(job.run_id, job.step_key, job.value)
        await self._resolved(written)
        log.info("timer", run_id=job.run_id, step_key=job.step_key, outcome=written.outcome.value)

    async def _resolved(self, written: Written) -> None:
        """After a pending step's value was offered: start the joined run, announce failed ones."""
        if written.outcome is Outcome.JOINED:
            self.on_next_job()
        await lifecycle.runs_failed(self.ingest, written.ended)

    async def _unknown_function(self, run: LoadedRun) -> None:
        message = (
            f"function {run.fn_slug!r} is not defined in this worker's app (it serves {self.functions.describe()})"
        )
        log.error("function.unknown", run_id=run.run_id, function=run.fn_slug)
        error = {"name": "FunctionNotFound", "message": message, "stack": ""}
        await self._finish(run, RunStatus.FAILED, error=error)

    async def _apply(
        self,
        job: JobSpec,
        run: LoadedRun,
        fn: Runnable,
        result: ExecutionResult,
        elapsed_ms: int,
        lease: JobLease | None,
    ) -> tuple[str | None, str, JobEnded | None]:
        """Make the run reflect ``result`` (already checked against the job); returns (step id,
        outcome) for the log line, and whether the write ended the job (and handed over the next)."""
        if isinstance(result, FunctionReturned):
            for warning in result.warnings:
                log.warning("run.diverged", run_id=run.run_id, function=fn.slug, detail=warning)
            return None, await self._finish(run, RunStatus.COMPLETED, output=result.value), None
        if isinstance(result, FunctionFailed):
            failures = job.attempt + 1
            if result.retriable and failures < fn.max_attempts:
                delay = result.retry_after or fn.backoff.delay(failures)
                # a planned step's retry is that step's: it must still be pending
                retried = await self._retry(job, run, delay, key=job.step_key or "", error=result.error)
                return None, await self._settle(job, run, "function-error-retry", retried), None
            return None, await self._finish(run, RunStatus.FAILED, error=result.error), None
        ops = result.opcodes
        if len(ops) == 1 and ops[0].op in (Op.STEP_RUN, Op.STEP_FAILED, Op.STEP_ERROR):
            label, ended = await self._step_result(job, run, fn, ops[0], result, elapsed_ms, lease)
            return ops[0].step_id, label, ended
        if len(ops) == 1 and ops[0].op is Op.SLEEP:
            return ops[0].step_id, await self._sleep(job, run, ops[0]), None
        return ",".join(op.step_id for op in ops), await self._fan_out(job, run, ops), None

    async def _step_result(
        self,
        job: JobSpec,
        run: LoadedRun,
        fn: Runnable,
        op: Opcode,
        result: StepsReported,
        elapsed_ms: int,
        lease: JobLease | None,
    ) -> tuple[str, JobEnded | None]:
        max_attempts, backoff = _step_policy(op, fn)
        if op.op is Op.STEP_ERROR and (result.no_retry or job.attempt + 1 >= max_attempts):
            # The SDK asked for no retry, or the attempts are spent (an SDK may not have noticed):
            # the step failed for good, and its error is memoized like a StepFailed.
            op = dataclasses.replace(op, op=Op.STEP_FAILED)
        if op.op is Op.STEP_ERROR:
            delay = result.retry_after or backoff.delay(job.attempt + 1)
            retried = await self._retry(
                job, run, delay, key=op.id, name=op.step_id, error=op.error or {}, executed=True
            )
            return await self._settle(job, run, "step-error-retry", retried), None
        value = memo_data(op.data) if op.op is Op.STEP_RUN else memo_error(op.error or {})
        label = "step-ok" if op.op is Op.STEP_RUN else "step-failed"
        if job.kind is JobKind.PLANNED:
            written = await self.store.resolve(
                run.run_id,
                op.id,
                value,
                name=op.step_id,
                fence_field=run.fence_field,
                fence=run.fence,
                executed=(job.attempt + 1, elapsed_ms),
            )
            await self._resolved(written)
            if written.outcome is Outcome.JOINED:
                return label, None
        else:
            written = await self.store.commit_step(
                run,
                key=op.id,
                value=value,
                name=op.step_id,
                attempts=job.attempt + 1,
                duration_ms=elapsed_ms,
                lease=lease,
            )
            await lifecycle.runs_failed(self.ingest, written.ended)
            if written.job_ended:
                return label, self._handed_over(run, op.id, value, written.handoff)
        return await self._settle(job, run, label, written.outcome), None

    def _handed_over(self, run: LoadedRun, key: str, value: Any, handoff: Handoff | None) -> JobEnded:
        """The job ended with its commit; the run's next job, if handed over, comes with the state
        its load would have read: this run's, plus the step just committed."""
        memo = {**run.memo, key: value}
        state = CachedRun(run.events, memo, (*run.stack, key))
        self.cache.put(run.run_id, state)
        if handoff is None:
            return JobEnded()
        preload = dataclasses.replace(
            run,
            fence=handoff.fence,
            position=run.position + 1,
            memo=memo,
            stack=state.stack,
            fence_field=FENCE,
            first_start=False,
            force_plan=handoff.force_plan,
        )
        job = ClaimedJob(handoff.job_id, handoff.payload, handoff.job_try, now_ms())
        return JobEnded(job, preload)

    async def _retry(
        self,
        job: JobSpec,
        run: LoadedRun,
        delay: dt.timedelta,
        *,
        key: str,
        error: dict[str, Any],
        name: str = "",
        executed: bool = False,
    ) -> Outcome:
        """Schedule the attempt after ``job``'s failed one, ``delay`` from now, recording the error
        on step ``key`` (if any); ``executed``: the step's code ran and failed."""
        return await self.store.schedule(
            run,
            _retry_job(job, run),
            due_ms=now_ms() + _ms(delay),
            status=None,
            key=key,
            name=name,
            attempts=job.attempt + 1,
            error_message=_describe(error),
            executed=executed,
        )

    async def _settle(self, job: JobSpec, run: LoadedRun, label: str, outcome: Outcome) -> str:
        """The log label of a write's outcome; a refusal that may have left the run with nothing to
        move it on nudges it (see the module docstring)."""
        if outcome in (Outcome.OK, Outcome.JOINED):
            return label
        if outcome is Outcome.STATE_TOO_LARGE:
            return f"{label}-failed:state_too_large"
        if outcome in OWNED_ELSEWHERE:
            log.info("write.refused", run_id=run.run_id, job=job.job_id, reason=outcome.value)
            return f"{label}-refused:{outcome.value}"
        nudged = await self.store.nudge(run, job)
        log.warning("write.refused", run_id=run.run_id, job=job.job_id, reason=outcome.value, run_state=nudged)
        if nudged == "nudged":
            self.on_next_job()
        return f"{label}-refused:{outcome.value}"

    async def _sleep(self, job: JobSpec, run: LoadedRun, op: Opcode) -> str:
        due = wake_time(op, dt.datetime.now(dt.UTC))
        wake = JobSpec(run.run_id, run.position, kind=JobKind.WAKE, step_key=op.id)
        outcome = await self.store.schedule(
            run, wake, due_ms=_epoch_ms(due), status=RunStatus.SLEEPING, key=op.id, name=op.step_id, attempts=1
        )
        return await self._settle(job, run, "sleep", outcome)

    async def _fan_out(self, job: JobSpec, run: LoadedRun, ops: Sequence[Opcode]) -> str:
        """Steps reported together: plan each, then re-enter once when all are resolved."""
        at = now_ms()
        now = dt.datetime.now(dt.UTC)
        trigger = run.events[0].to_dict()
        pending: list[PendingStep] = []
        wait_records: list[waits.WaitRecord] = []
        invoking = False
        for op in ops:
            # runtime.answers let through only these kinds here
            if op.op is Op.STEP_PLANNED:
                planned = JobSpec(run.run_id, run.position, kind=JobKind.PLANNED, step_key=op.id)
                pending.append(PendingStep(op.id, op.step_id, planned, at))
            elif op.op is Op.SLEEP:
                timer = JobSpec(run.run_id, run.position, kind=JobKind.TIMER, step_key=op.id)
                pending.append(PendingStep(op.id, op.step_id, timer, _epoch_ms(wake_time(op, now))))
            elif op.op is Op.WAIT_FOR_EVENT:
                opts = op.opts or {}
                due = at + _ms(to_timedelta(opts.get("timeout") or "0s"))
                record = waits.WaitRecord(
                    run.run_id, op.id, waits.KIND_WAIT, str(opts.get("event") or op.name), opts.get("if"), due
                )
                record, registration = waits.plan(record, trigger)
                wait_records.append(record)
                timer = JobSpec(run.run_id, run.position, kind=JobKind.TIMER, step_key=op.id)
                pending.append(PendingStep(op.id, op.step_id, timer, due, registration))
            elif op.op is Op.INVOKE_FUNCTION:
                opts = op.opts or {}
                timeout = to_timedelta(opts["timeout"]) if opts.get("timeout") else DEFAULT_INVOKE_TIMEOUT
                timer = JobSpec(
                    run.run_id, run.position, kind=JobKind.TIMER, step_key=op.id, value=memo_error(INVOKE_TIMEOUT_ERROR)
                )
                # The child is created by a job enqueued with the fan-out, so a crash right after
                # the fan-out cannot leave the step waiting for a child that was never started.
                child = {"function_id": opts["function_id"], "payload": opts.get("payload") or {}, "name": op.step_id}
                start = JobSpec(run.run_id, run.position, kind=JobKind.INVOKE, step_key=op.id, value=child)
                pending.append(PendingStep(op.id, op.step_id, timer, at + _ms(timeout), start=start))
                invoking = True
        status = (
            RunStatus.WAITING
            if wait_records or invoking
            else (RunStatus.SLEEPING if all(o.op is Op.SLEEP for o in ops) else RunStatus.RUNNING)
        )
        join = JobSpec(run.run_id, run.position + len(ops))
        outcome = await self.store.fan_out(run, pending, join=join, status=status)
        if outcome is not Outcome.OK:
            return await self._settle(job, run, "fan-out", outcome)
        if invoking or any(op.op is Op.STEP_PLANNED for op in ops):
            self.on_next_job()
        for record in wait_records:
            # An event that arrived after this invocation began but before the wait was registered
            # was not matched at ingest: look back for it now.
            if await matching.look_back(self.ingest, record, since_ms=at - 2_000):
                self.on_next_job()
        return f"fan-out:{len(ops)}"

    async def _start_child(self, job: JobSpec) -> None:
        """An INVOKE job: create the child run of a pending invoke step (at most once: the child's
        dedupe key is the parent's run and step), or resolve the step with FunctionNotFound."""
        assert job.step_key is not None and isinstance(job.value, dict)
        if not await self.store.redis.sismember(keys.pending(job.run_id), job.step_key):  # type: ignore[misc]
            log.info("invoke.skipped", run_id=job.run_id, step_key=job.step_key, detail="the step is no longer pending")
            return
        slug, payload = str(job.value.get("function_id", "")), job.value.get("payload") or {}
        record = await self.registry.get(slug)
        if record is None:
            error = {"name": "FunctionNotFound", "message": f"invoke: no function {slug!r} is registered", "stack": ""}
            name = str(job.value.get("name") or "")
            await self._resolved(await self.store.resolve(job.run_id, job.step_key, memo_error(error), name=name))
            return
        event = Event(
            name="inngest/function.invoked",
            data=dict(payload.get("data") or {}),
            id=f"{job.run_id}.{job.step_key}",
            ts=now_ms(),
            v=payload.get("v"),
        )
        created, _ = await self.store.create_run(
            run_id=new_ulid(),
            fn_slug=record.slug,
            app_id=record.app_id,
            queue_id=record.config.get("queue") or record.app_id,
            events=[event],
            dedupe_key=event.id,
            parent=f"{job.run_id}|{job.step_key}",
            limits=self.store.function_limits(record.config),
        )
        if created:
            self.on_next_job()  # the child's first job is due now (if it is on this worker's queue)
        log.info("invoke.started", run_id=job.run_id, step_key=job.step_key, function=slug, created=bool(created))

    async def _finish(self, run: LoadedRun, status: RunStatus, *, output: Any = None, error: Any = None) -> str:
        written = await self.store.finish(
            run.run_id, run.fence, status=status, output=output, error=error, fence_field=run.fence_field
        )
        if written.outcome is not Outcome.OK:
            log.info("finish.refused", run_id=run.run_id, status=status, reason=written.outcome.value)
            return f"{status}-refused:{written.outcome.value}"
        self.cache.drop(run.run_id)
        self.on_next_job()  # an invoking parent may have been resumed
        await lifecycle.run_ended(
            self.ingest,
            run.run_id,
            status,
            fn_slug=run.fn_slug,
            event=run.events[0].to_dict(),
            output=output,
            error=error,
        )
        await lifecycle.runs_failed(self.ingest, written.ended)
        return status


def _step_policy(op: Opcode, fn: Runnable) -> tuple[int, Backoff]:
    """(max attempts, backoff) for a failed step: its own policy when it set one (``step.run(...,
    retries=, backoff=)``, carried in the opcode's opts and checked by ``stepq.runtime.answers``), else
    the function's."""
    opts = op.opts or {}
    retries = opts.get("retries")
    max_attempts = retries + 1 if isinstance(retries, int) and not isinstance(retries, bool) else fn.max_attempts
    raw = opts.get("backoff")
    return max_attempts, Backoff.from_dict(raw) if isinstance(raw, dict) else fn.backoff


def _retry_job(job: JobSpec, run: LoadedRun) -> JobSpec:
    """The job that tries again what ``job`` just failed: the same planned step, or a re-entry where
    the run stands now (a wake-up job's re-entry is one step further than the job itself)."""
    if job.kind is JobKind.PLANNED:
        return dataclasses.replace(job, attempt=job.attempt + 1)
    return JobSpec(run.run_id, run.position, job.attempt + 1)


def _describe(error: dict[str, Any]) -> str:
    return f"{error.get('name', 'Error')}: {error.get('message', '')}"


def _ms(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _epoch_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)
