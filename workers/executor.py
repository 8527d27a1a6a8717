"""The job every worker runs: advance one run by one invocation, then apply what the function asked.

load (claim + memo) -> invoke (engine) -> apply (commit / schedule / finish), each write one Lua
script. Nothing here raises into arq: every failure is recorded on the run or logged.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import structlog
from arq.worker import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.jobs import JobKind, JobSpec
from runtime.store import LoadedRun, LoadRefused, Outcome, RunCache, RunStore, now_ms
from sdk.durations import parse_iso, to_timedelta
from sdk.engine import ExecutionRequest, ExecutionResult, FunctionFailed, FunctionReturned, StepsReported
from sdk.errors import NonDeterminismError
from sdk.function import Function
from sdk.opcodes import Op, Opcode, memo_data, memo_error
from workers.invoker import Invoker

log = structlog.get_logger("stepq.worker")

#: A job that hits an unexpected internal error is retried this many times before its run fails.
INTERNAL_RETRIES = 5


class Executor:
    """Advances runs of one app's functions."""

    def __init__(self, functions: dict[str, Function], store: RunStore, invoker: Invoker) -> None:
        self.functions = functions  # by slug
        self.store = store
        self.invoker = invoker
        self.cache = RunCache()
        #: Called after a commit enqueued the run's next job, due now (the worker polls at once).
        self.on_next_job: Callable[[], None] = lambda: None

    async def advance(self, ctx: dict[str, Any], payload: Any) -> None:
        """arq job entry point: ``payload`` is a JobSpec payload.

        Redis outages and internal errors never drop the job: it goes back to the queue (arq's
        ``Retry``) and runs again once Redis answers.
        """
        try:
            await self._advance(ctx, payload)
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
            log.warning("job.redis_unavailable", job_id=ctx.get("job_id"), error=str(exc))
            raise Retry(defer=1.0) from exc
        except Exception as exc:
            tries = int(ctx.get("job_try", 1))
            log.exception("job.internal_error", job_id=ctx.get("job_id"), job_try=tries)
            if tries < INTERNAL_RETRIES:
                raise Retry(defer=min(2.0**tries, 30.0)) from exc
            await self._give_up(payload, exc)

    async def _give_up(self, payload: Any, exc: Exception) -> None:
        job = JobSpec.from_payload(payload)
        error = {"name": "InternalError", "message": f"stepq failed to advance the run: {exc!r}", "stack": ""}
        await self.store.finish(job.run_id, "", status="failed", error=error)

    async def _advance(self, ctx: dict[str, Any], payload: Any) -> None:
        started = time.perf_counter()
        try:
            job = JobSpec.from_payload(payload)
        except ValueError as exc:
            log.error("job.malformed", job_id=ctx.get("job_id"), error=str(exc))
            return
        loaded = await self.store.load(job, self.cache)
        if isinstance(loaded, LoadRefused):
            log.debug("job.skipped", run_id=job.run_id, reason=loaded.outcome.value, detail=loaded.detail)
            return
        fn = self.functions.get(loaded.fn_slug)
        if fn is None:
            await self._unknown_function(loaded)
            return
        request = ExecutionRequest(
            event=loaded.events[0],
            events=loaded.events,
            steps=loaded.memo,
            run_id=loaded.run_id,
            attempt=job.attempt,
            stack=loaded.stack,
            max_output_bytes=self.store.limits.max_output_bytes,
        )
        result = await self.invoker.invoke(fn, request)
        if _is_divergence(result):
            # Re-enter once with the steps' names, so the error names steps as the user wrote them.
            request.step_names = await self.store.step_names(loaded.run_id, loaded.stack)
            result = await self.invoker.invoke(fn, request)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        step, outcome = await self._apply(job, loaded, fn, result, elapsed_ms)
        log.info(
            "invocation",
            run_id=loaded.run_id,
            function=fn.slug,
            step=step,
            attempt=job.attempt,
            outcome=outcome,
            duration_ms=elapsed_ms,
        )

    async def _unknown_function(self, run: LoadedRun) -> None:
        message = (
            f"function {run.fn_slug!r} is not defined in this worker's app "
            f"(it serves {', '.join(sorted(self.functions)) or 'nothing'})"
        )
        log.error("function.unknown", run_id=run.run_id, function=run.fn_slug)
        error = {"name": "FunctionNotFound", "message": message, "stack": ""}
        await self.store.finish(run.run_id, run.fence, status="failed", error=error)

    async def _apply(
        self, job: JobSpec, run: LoadedRun, fn: Function, result: ExecutionResult, elapsed_ms: int
    ) -> tuple[str | None, str]:
        """Make the run reflect ``result``; returns (step id, outcome) for the log line."""
        if isinstance(result, FunctionReturned):
            for warning in result.warnings:
                log.warning("run.diverged", run_id=run.run_id, function=fn.slug, detail=warning)
            return None, await self._finish(run, "completed", output=result.value)
        if isinstance(result, FunctionFailed):
            failures = job.attempt + 1
            if result.retriable and failures < fn.max_attempts:
                delay = result.retry_after or fn.backoff.delay(failures)
                retry = JobSpec(run.run_id, run.position, job.attempt + 1)
                outcome = await self.store.schedule(
                    run,
                    retry,
                    due_ms=now_ms() + _ms(delay),
                    status="running",
                )
                return None, f"function-error-retry:{outcome.value}"
            return None, await self._finish(run, "failed", error=result.error)
        return await self._apply_opcodes(job, run, fn, result, elapsed_ms)

    async def _apply_opcodes(
        self, job: JobSpec, run: LoadedRun, fn: Function, result: StepsReported, elapsed_ms: int
    ) -> tuple[str | None, str]:
        if len(result.opcodes) != 1:
            error = {
                "name": "UnsupportedOpcode",
                "message": f"{len(result.opcodes)} steps were reported at once; parallel steps are not supported yet",
                "stack": "",
            }
            return None, await self._finish(run, "failed", error=error)
        op = result.opcodes[0]
        if op.op in (Op.STEP_RUN, Op.STEP_FAILED):
            value = memo_data(op.data) if op.op is Op.STEP_RUN else memo_error(op.error or {})
            outcome = await self.store.commit_step(
                run, key=op.id, value=value, name=op.step_id, attempts=job.attempt + 1, duration_ms=elapsed_ms
            )
            await self._after_commit(run, op, outcome)
            return op.step_id, ("step-ok" if op.op is Op.STEP_RUN else "step-failed") + _suffix(outcome)
        if op.op is Op.STEP_ERROR:
            failures = job.attempt + 1
            delay = result.retry_after or fn.backoff.delay(failures)
            retry = JobSpec(run.run_id, run.position, job.attempt + 1)
            message = (op.error or {}).get("message", "")
            outcome = await self.store.schedule(
                run,
                retry,
                due_ms=now_ms() + _ms(delay),
                status="running",
                key=op.id,
                name=op.step_id,
                attempts=failures,
                error_message=f"{(op.error or {}).get('name', 'Error')}: {message}",
            )
            return op.step_id, "step-error-retry" + _suffix(outcome)
        if op.op is Op.SLEEP:
            due = _wake_time(op)
            wake = JobSpec(run.run_id, run.position, kind=JobKind.WAKE, step_key=op.id)
            outcome = await self.store.schedule(
                run, wake, due_ms=int(due.timestamp() * 1000), status="sleeping", key=op.id, name=op.step_id
            )
            return op.step_id, "sleep" + _suffix(outcome)
        error = {"name": "UnsupportedOpcode", "message": f"opcode {op.op.value} is not supported yet", "stack": ""}
        return op.step_id, await self._finish(run, "failed", error=error)

    async def _after_commit(self, run: LoadedRun, op: Opcode, outcome: Outcome) -> None:
        if outcome is Outcome.OK:
            self.on_next_job()
            return
        if outcome in (Outcome.TOO_MANY_STEPS, Outcome.STATE_TOO_LARGE):
            limits = self.store.limits
            message = (
                f"run reached the limit of {limits.max_steps} steps (STEPQ_MAX_STEPS) at step {op.step_id!r}"
                if outcome is Outcome.TOO_MANY_STEPS
                else f"run state would exceed {limits.max_state_bytes} bytes (STEPQ_MAX_STATE_BYTES) "
                f"at step {op.step_id!r}"
            )
            await self._finish(run, "failed", error={"name": "LimitExceeded", "message": message, "stack": ""})
            return
        log.warning("commit.refused", run_id=run.run_id, step=op.step_id, reason=outcome.value)

    async def _finish(self, run: LoadedRun, status: str, *, output: Any = None, error: Any = None) -> str:
        outcome = await self.store.finish(run.run_id, run.fence, status=status, output=output, error=error)
        if outcome is Outcome.OK:
            self.cache.drop(run.run_id)
        else:
            log.warning("finish.refused", run_id=run.run_id, status=status, reason=outcome.value)
        return status + _suffix(outcome)


def _is_divergence(result: ExecutionResult) -> bool:
    return isinstance(result, FunctionFailed) and result.error.get("name") == NonDeterminismError.__name__


def _suffix(outcome: Outcome) -> str:
    return "" if outcome is Outcome.OK else f"-refused:{outcome.value}"


def _ms(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _wake_time(op: Opcode) -> dt.datetime:
    """A Sleep opcode's wake-up time: its duration from now, or its ISO date."""
    spec = (op.opts or {}).get("duration") or op.name or ""
    if isinstance(spec, str) and spec[:1].isdigit() and ("T" in spec or "-" in spec):
        return parse_iso(spec)
    return dt.datetime.now(dt.UTC) + to_timedelta(spec, what=f"sleep of step {op.step_id!r}")
