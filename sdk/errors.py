"""Errors that user code raises or catches, with Inngest's names and semantics."""

from __future__ import annotations

import datetime as dt
import traceback
from typing import Any

from .durations import DurationLike, to_timedelta


class StepqError(Exception):
    """Base of every error stepq raises on its own account."""


class NonRetriableError(Exception):
    """Raise to fail the run at once, without further attempts."""

    def __init__(self, message: str = "", *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        if cause is not None:
            self.__cause__ = cause


class RetryAfterError(Exception):
    """Raise to retry, no earlier than ``retry_after`` from now or at a timezone-aware datetime.

    A duration is an int of milliseconds (as in inngest-py), a timedelta, or a string like "30s"."""

    def __init__(self, message: str, retry_after: DurationLike | dt.datetime) -> None:
        super().__init__(message)
        self.message = message
        if isinstance(retry_after, dt.datetime):
            if retry_after.tzinfo is None:
                raise ValueError("RetryAfterError: retry_after datetime must be timezone-aware")
            self.retry_after = max(dt.timedelta(0), retry_after - dt.datetime.now(dt.UTC))
        else:
            self.retry_after = to_timedelta(retry_after, what="RetryAfterError retry_after")


class StepError(Exception):
    """Raised at a step whose attempts are exhausted; user code may catch it and go on.

    ``name``, ``message`` and ``stack`` describe the error the step raised on its last attempt.
    """

    def __init__(self, name: str, message: str, stack: str | None = None, *, step_id: str = "") -> None:
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name
        self.message = message
        self.stack = stack
        self.step_id = step_id


class NonDeterminismError(StepqError):
    """A re-entered run asked for other steps than its history holds (code changed, random step id)."""


class StepOutputError(StepqError):
    """A step returned a value stepq cannot store: not JSON-compatible, or too large."""


class OutputTooLarge(StepOutputError):
    """A step (or function) returned more bytes than one output may hold (STEPQ_MAX_OUTPUT_BYTES)."""


class InvalidEventError(StepqError, ValueError):
    """An event failed validation; the message names the field."""


class FunctionConfigError(StepqError, ValueError):
    """A function definition is invalid; the message names the option."""


def error_payload(exc: BaseException) -> dict[str, Any]:
    """Inngest's error shape: ``{"name", "message", "stack"}``."""
    if isinstance(exc, StepError):
        return {"name": exc.name, "message": exc.message, "stack": exc.stack or ""}
    message = getattr(exc, "message", None)
    if not isinstance(message, str) or not message:
        message = str(exc)
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"name": type(exc).__name__, "message": message, "stack": stack}
