"""The job every worker runs: advance one run by one invocation.

load (claim + memo) -> invoke (engine) -> check the answer (runtime/answers.py) -> decide (pure,
runtime/decide.py) -> apply the plan (one Lua script, runtime/lua/apply_plan.lua) -> after-effects
that are not run state (lifecycle events, a new wait's look-back, the log line). The same script
ends the job, and may hand this worker the run's next job (``JobEnded``).
Nothing here raises into arq but a request to try the job again later: every failure is recorded on
the run or logged, and while Redis is unreachable or in a passing state (full, read-only, busy,
loading) the job goes back to the queue and waits.

Every write that is refused leaves the run in someone's hands: a newer attempt holds it (``fenced``),
it ended (``done``), or, when the refusal says the run moved in a way this job did not expect
(``stale``, ``duplicate``), the same script nudged the run so that it has a job to go on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from typing import Any

import structlog
from arq.worker import Retry

from stepq.durations import to_timedelta
from stepq.engine import FunctionFailed
from stepq.event import Event
from stepq.expressions import Bindings
from stepq.opcodes import memo_error
from stepq.replay import ExecutionRequest
from stepq.runtime import flow_starts, gather, history, keys, lifecycle, matching
from stepq.runtime.answers import check_answer
from stepq.runtime.decide import decide, finish, give_up
from stepq.runtime.ingest import Ingest
from stepq.runtime.job_queue import ClaimedJob, JobEnded
from stepq.runtime.jobs import FENCE, JobKind, JobSpec
from stepq.runtime.placement import new_run_id
from stepq.runtime.plan import Commit, FanOut, Finish, JobLease, Now, Plan, Policy, Write
from stepq.runtime.redis_errors import is_passing
from stepq.runtime.registry import Registry
from stepq.runtime.run_status import RunStatus
from stepq.runtime.store import (
    CachedRun,
    ClaimLoad,
    Handoff,
    LoadedRun,
    LoadRefused,
    Outcome,
    RunCache,
    RunStore,
    Written,
    now_ms,
)

from . import metrics
from .faults import Faults
from .invoker import Invoker
from .logs import step_log_level
from .remote import FunctionSource, RemoteFunction, Runnable
from .tracing import WorkerTracing

log = structlog.get_logger("stepq.worker")

#: A job that hits an unexpected internal error is retried this many times before its run fails.
INTERNAL_RETRIES = 5
#: The outcome label of a write refused because a later load holds the run.
FENCED_SUFFIX = f"-refused:{Outcome.FENCED.value}"
#: How soon a job whose write was fenced runs again, to check the other delivery did its work.
FENCED_RECHECK_S = 1.0
#: Refusals that mean someone else has the run in hand (a newer attempt) or it is over.
OWNED_ELSEWHERE = (Outcome.FENCED, Outcome.DONE, Outcome.MISSING, Outcome.CANCELLED)


class Executor:
    """Advances runs of one app's functions."""

    def __init__(
        self,
        functions: FunctionSource,
        store: RunStore,
        invoker: Invoker,
        *,
        step_timeout_s: float = 2 * 3600,
        tracing: WorkerTracing | None = None,
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
        #: Jobs sent back to the queue while Redis is unreachable or in a passing state.
        self.redis_faults = Faults("jobs")
        #: OpenTelemetry spans of runs (stepq.workers.tracing); inert unless tracing is on.
        self.tracing = tracing or WorkerTracing()
        #: The level of the line logged per invocation (STEPQ_STEP_LOG_LEVEL; stepq.workers.logs).
        self.step_log_level = step_log_level()

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
        written = await self.store.apply(give_up(job.run_id, error, now_ms()))
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
        elif isinstance(preload, ClaimLoad) and preload.run_id == job.run_id:
            loaded = await self.store.claimed(job, preload, self.cache)  # loaded by the claim that claimed it
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
        limits = fn.limits if isinstance(fn, RemoteFunction) else self.store.limits
        metrics.invocation_started(fn.slug)
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
        span = await self.tracing.attempt_started(job, loaded)
        try:
            # In this task, not in one of its own (asyncio.wait_for's): a task per invocation costs
            # a warm step hop three event-loop iterations. The job already runs in a task of its own,
            # so context variables user code sets stay within this job (its log lines see them).
            async with asyncio.timeout(self.step_timeout_s):
                with self.tracing.current(span):
                    result = await self.invoker.invoke(fn, request)
        except TimeoutError:
            message = f"the invocation of {fn.slug} took longer than {self.step_timeout_s:g} s (STEPQ_STEP_TIMEOUT)"
            result = FunctionFailed({"name": "StepTimeout", "message": message, "stack": ""}, retriable=True)
        if isinstance(result, FunctionFailed) and result.divergence is not None:
            # Name the steps as the user wrote them (the engine knows only their keys).
            names = await self.store.step_names(loaded.run_id, [result.divergence.expected_key])
            result.error["message"] = result.divergence.message(fn.id, loaded.run_id, names)
        result = check_answer(result, job=job, memoized=loaded.memo, position=loaded.position, limits=limits)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        plan = decide(job, loaded, Policy(fn.max_attempts, fn.backoff), result, _now(), elapsed_ms=elapsed_ms)
        written = await self.store.apply(plan, _lease(ctx))
        outcome = await self._applied(job, loaded, plan, written)
        self.tracing.attempt_ended(span, plan, outcome, result)
        log.log(
            self.step_log_level,
            "invocation",
            run_id=loaded.run_id,
            function=fn.slug,
            step=plan.step,
            attempt=job.attempt,
            outcome=outcome,
            duration_ms=elapsed_ms,
            **self.tracing.log_ids(span),
        )
        metrics.invocation_ended(fn.slug, plan, written.outcome, elapsed_ms / 1000)
        if outcome.endswith(FENCED_SUFFIX):
            # A later load of this job's run holds it: most likely another delivery of this job,
            # which may since have died (its lease lapsed, or this worker took the lock back). Run
            # the job once more rather than end it: if the other delivery did the work, the re-run
            # finds the run moved on and does nothing.
            raise Retry(defer=FENCED_RECHECK_S)
        if not written.job_ended:
            return None
        return self._handed_over(loaded, plan.write, written.handoff)

    def _handed_over(self, run: LoadedRun, write: Write, handoff: Handoff | None) -> JobEnded:
        """The plan's write ended the job; the run's next job, if handed over with it, comes with
        the state its load would have read: this run's, plus the step just committed."""
        if handoff is None or not isinstance(write, Commit):
            return JobEnded()
        memo = {**run.memo, write.key: write.value}
        state = CachedRun(run.events, memo, (*run.stack, write.key))
        self.cache.put(run.run_id, state)
        # Every field named (dataclasses.replace, the same, reads the fields' definitions each call).
        preload = LoadedRun(
            run_id=run.run_id,
            fn_slug=run.fn_slug,
            queue_id=run.queue_id,
            fence=handoff.fence,
            position=run.position + 1,
            events=run.events,
            memo=memo,
            stack=state.stack,
            fence_field=FENCE,
            created_ms=run.created_ms,
            first_start=False,
            force_plan=handoff.force_plan,
        )
        return JobEnded(ClaimedJob(handoff.job_id, handoff.payload, handoff.job_try, now_ms()), preload)

    async def _within_timeouts(self, fn: Runnable, run: LoadedRun) -> bool:
        """On a run's first start: cancel it if it started too late; set its finish deadline."""
        timeouts = fn.timeouts
        assert timeouts is not None
        if timeouts.start is not None:
            limit = to_timedelta(timeouts.start)
            late = now_ms() - run.created_ms > limit.total_seconds() * 1000
            if late:
                # a debounced or batched run is due when it fired, not when its first event created
                # it (read only then: the common case costs no round trip)
                since = await gather.fired_at(self.store.redis, run.run_id) or run.created_ms
                late = now_ms() - since > limit.total_seconds() * 1000
            if late:
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
        fields = history.entry(history.K_TIMER, key=job.step_key)
        written = await self.store.resolve(job.run_id, job.step_key, job.value, history=fields)
        await self._resolved(written)
        await self.tracing.timer_fired(job, written.outcome.value)
        log.info("timer", run_id=job.run_id, step_key=job.step_key, outcome=written.outcome.value)

    async def _resolved(self, written: Written) -> None:
        """After a pending step's value was offered: announce the runs it failed."""
        await lifecycle.runs_failed(self.ingest, written.ended)

    async def _unknown_function(self, run: LoadedRun) -> None:
        message = (
            f"function {run.fn_slug!r} is not defined in this worker's app (it serves {self.functions.describe()})"
        )
        log.error("function.unknown", run_id=run.run_id, function=run.fn_slug)
        error = {"name": "FunctionNotFound", "message": message, "stack": ""}
        end = Finish(RunStatus.FAILED, error=error)
        await self._finished(run, end, await self.store.apply(finish(run, end, now_ms())))

    async def _applied(self, job: JobSpec, run: LoadedRun, plan: Plan, written: Written) -> str:
        """The after-effects of an applied plan that are not run state (lifecycle events, the
        look-back of new waits); returns the outcome for the log line."""
        write, outcome, label = plan.write, written.outcome, plan.label
        for warning in plan.warnings:
            log.warning("run.diverged", run_id=run.run_id, function=run.fn_slug, detail=warning)
        if isinstance(write, Finish):
            return await self._finished(run, write, written)
        await lifecycle.runs_failed(self.ingest, written.ended)
        if outcome in (Outcome.OK, Outcome.JOINED):
            await self._moved_on(write, since_ms=plan.now_ms - 2_000)
            return label
        if outcome is Outcome.STATE_TOO_LARGE:
            return f"{label}-failed:state_too_large"
        if outcome in OWNED_ELSEWHERE:
            log.info("write.refused", run_id=run.run_id, job=job.job_id, reason=outcome.value)
        else:
            # stale or duplicate: apply_plan.lua made sure something moves the run on (the nudge)
            log.warning(
                "write.refused", run_id=run.run_id, job=job.job_id, reason=outcome.value, run_state=written.nudged
            )
        return f"{label}-refused:{outcome.value}"

    async def _moved_on(self, write: Write, since_ms: int) -> None:
        """A fan-out went through: look back for events that came while its waits were being
        registered (ingest did not match them)."""
        if isinstance(write, FanOut):
            for record in write.waits:
                await matching.look_back(self.ingest, record, since_ms=since_ms)

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
            fields = history.entry(history.K_NO_FUNCTION, key=job.step_key, function=slug)
            written = await self.store.resolve(job.run_id, job.step_key, memo_error(error), name=name, history=fields)
            await self._resolved(written)
            return
        event = Event(
            name="inngest/function.invoked",
            data=dict(payload.get("data") or {}),
            id=f"{job.run_id}.{job.step_key}",
            ts=now_ms(),
            v=payload.get("v"),
        )
        bindings = Bindings(event=event.to_dict())
        # in the shard the child's own function's flow control puts it (runtime/placement.py)
        child_id = new_run_id(record.slug, record.flow, bindings, event.id)
        trace = await self.tracing.invoke_started(job, record.slug, child_id)  # the child continues the trace
        # the child's start limits apply to invoked runs too (a skipped child fails the invoke step)
        checks = flow_starts.start_checks(record.flow, record.slug, child_id, bindings, self.store.limits)
        reply = await self.store.create_run(
            run_id=child_id,
            fn_slug=record.slug,
            app_id=record.app_id,
            queue_id=record.config.get("queue") or record.app_id,
            events=[event],
            dedupe_key=event.id,
            parent=f"{job.run_id}|{job.step_key}",
            limits=self.store.function_limits(record.config),
            flow=record.flow,
            checks=checks,
            trace=trace,
        )
        created = int(reply[0]) == 1
        started = history.entry(
            history.K_INVOKE, key=job.step_key, child_run_id=child_id, function=record.slug, created=created
        )
        await self.store.record_history(job.run_id, started)
        log.info("invoke.started", run_id=job.run_id, step_key=job.step_key, function=slug, created=created)
        outcomes = flow_starts.StartOutcomes.of_create_run(reply)
        await lifecycle.announce_starts(self.ingest, outcomes, {child_id: (record.slug, event.to_dict())})

    async def _finished(self, run: LoadedRun, write: Finish, written: Written) -> str:
        if written.outcome is not Outcome.OK:
            log.info("finish.refused", run_id=run.run_id, status=write.status, reason=written.outcome.value)
            return f"{write.status}-refused:{written.outcome.value}"
        self.cache.drop(run.run_id)
        await self.tracing.run_ended(run, write)
        await lifecycle.run_ended(
            self.ingest,
            run.run_id,
            write.status,
            fn_slug=run.fn_slug,
            event=run.events[0].to_dict(),
            output=write.output,
            error=write.error,
        )
        await lifecycle.runs_failed(self.ingest, written.ended)
        return write.status


def _lease(ctx: dict[str, Any]) -> JobLease | None:
    """The job running as the worker's queue sees it (None outside a worker: nothing to end)."""
    if "lease_token" not in ctx:
        return None
    return JobLease(str(ctx["job_id"]), ctx["lease_token"], int(ctx["lease_ms"]), bool(ctx.get("may_hand_off")))


def _now() -> Now:
    """The one reading of the clock (and of chance) a decision gets."""
    at = time.time()
    return Now(int(at * 1000), dt.datetime.fromtimestamp(at, dt.UTC), random.random())


def _ms(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() * 1000)
