"""The pure step engine: a function, its events, its memo and a request context in; a result out.

No Redis, no queue, no network. One call re-enters the function from the top: memoized steps return
their stored result, the first new step stops the function (running it first when it may run right
away), and the result says what the runtime must do next. This module holds ``execute`` and its
result types; ``stepq.replay`` holds the request and the replay bookkeeping, ``stepq.step`` the step
tools that drive it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
from typing import Any

from .context import make_context
from .errors import NonDeterminismError, NonRetriableError, RetryAfterError, StepError, error_payload
from .function import Function
from .jsonvalue import JSON, NotJSONError, check_json
from .opcodes import Opcode
from .replay import (
    Diverged,
    Divergence,
    ExecutionRequest,
    FailedStep,
    HookFailed,
    Interrupt,
    InvocationHooks,
    Replay,
    Skip,
)


@dataclasses.dataclass(slots=True)
class FunctionReturned:
    """The function returned: the run is complete."""

    value: JSON
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class FunctionFailed:
    """The function raised outside a step (or let a StepError escape), or a step's code raised a
    ``NonRetriableError`` that escaped the function (``step`` names that step)."""

    error: dict[str, Any]
    retriable: bool
    retry_after: dt.timedelta | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Set when the failure is a divergence from the run's history (the runtime names its steps).
    divergence: Divergence | None = None
    #: The exception raised, when there was one (middleware's ``transform_output`` sees it).
    exception: Exception | None = dataclasses.field(default=None, compare=False, repr=False)
    #: The step whose code raised the NonRetriableError that failed the invocation (None: the
    #: function's own code raised, or user code caught the step's error and raised another).
    step: FailedStep | None = None


@dataclasses.dataclass(slots=True)
class StepsReported:
    """The function stopped at new steps; ``opcodes`` says what each needs."""

    opcodes: list[Opcode]
    retry_after: dt.timedelta | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: A step error here must not be retried (an SDK's ``X-Inngest-No-Retry: true``).
    no_retry: bool = False


ExecutionResult = FunctionReturned | FunctionFailed | StepsReported


async def execute(fn: Function, request: ExecutionRequest, hooks: InvocationHooks | None = None) -> ExecutionResult:
    """Re-enter ``fn`` once with ``request`` and report what happened. Never raises for user errors.

    ``hooks`` (middleware, see ``stepq.invocation``) hear when the function starts, when new code is
    about to run and when it stops; a hook's error fails the invocation like the function's own.
    """
    replay = Replay(request, fn.max_attempts, fn.app_id)
    ctx = make_context(fn, request, replay)
    try:
        if hooks is not None:
            replay.hooks = hooks
            await hooks.started(ctx)
            await replay.memo_used()  # no memoized steps: all the code is new
        if fn.is_async:
            value = await fn.handler(ctx)
        else:
            value = await asyncio.to_thread(fn.handler, ctx)
            if inspect.isawaitable(value):
                raise TypeError(f"function {fn.id!r} is a plain def but returned an awaitable")
        value = fn.serialize_output(value)
        if hooks is not None:
            await hooks.stopped()
    except Interrupt as stop:
        if hooks is not None:
            try:
                await hooks.stopped()
            except Exception as exc:
                return failure(exc)
        diverged = None if request.target_step else replay.divergence([op.step_id for op in stop.opcodes])
        if diverged is not None:
            return _diverged(fn, request, diverged)
        return StepsReported(stop.opcodes, retry_after=stop.retry_after)
    except Diverged as stop:
        diverged = replay.divergence([stop.step_id])
        assert diverged is not None
        return _diverged(fn, request, diverged)
    except HookFailed as failed:
        return failure(failed.error)
    except Skip:
        return FunctionFailed(
            error_payload(NonDeterminismError(f"planned step {request.target_step} was not reached")),
            retriable=False,
        )
    except Exception as exc:
        return failure(exc, replay.step_that_raised(exc))

    if request.target_step is not None:
        return FunctionFailed(
            error_payload(
                NonDeterminismError(f"planned step {request.target_step} was not reached: the function returned first")
            ),
            retriable=False,
        )
    warnings = []
    diverged = replay.divergence([])
    if diverged is not None:
        warnings.append(f"function {fn.id!r} returned, but {diverged.describe(request.step_names)}")
    try:
        checked = check_json(value, "return value")
    except NotJSONError as exc:
        return FunctionFailed(
            error_payload(NonRetriableError(f"function {fn.id!r} returned a value that cannot be stored: {exc}")),
            retriable=False,
        )
    return FunctionReturned(checked, warnings)


def failure(exc: Exception, step: FailedStep | None = None) -> FunctionFailed:
    """The failure an exception out of user code (or a hook) makes: retried unless it says not to.

    ``step``: the step whose code raised ``exc`` (a NonRetriableError), to record it against."""
    if isinstance(exc, StepError | NonRetriableError | NonDeterminismError):
        return FunctionFailed(error_payload(exc), retriable=False, exception=exc, step=step)
    if isinstance(exc, RetryAfterError):
        return FunctionFailed(error_payload(exc), retriable=True, retry_after=exc.retry_after, exception=exc)
    return FunctionFailed(error_payload(exc), retriable=True, exception=exc)


def _diverged(fn: Function, request: ExecutionRequest, divergence: Divergence) -> FunctionFailed:
    message = divergence.message(fn.id, request.run_id, request.step_names)
    return FunctionFailed(error_payload(NonDeterminismError(message)), retriable=False, divergence=divergence)
