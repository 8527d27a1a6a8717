"""``ctx``: what a function sees on each invocation."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import structlog

from .event import Event
from .function import Function
from .opcodes import Opcode
from .replay import ExecutionRequest, Interrupt, Replay, Skip
from .step import Step, StepSync

T = TypeVar("T")


class ReplayAwareLogger:
    """A logger that stays quiet while memoized steps replay, so each line prints once.

    It wraps stepq's structlog logger, or the ``logging.Logger`` given as ``Inngest(logger=...)``;
    positional arguments are %-format arguments for either.
    """

    def __init__(self, logger: Any, replay: Replay) -> None:
        self._logger = logger
        self._replay = replay
        #: For stepq's own logger: the values its lines carry, bound on the first line. Binding a
        #: structlog logger costs every invocation a few microseconds, and most never log.
        self._bind_later: dict[str, Any] | None = None

    @classmethod
    def stepq_logger(cls, replay: Replay, **values: Any) -> ReplayAwareLogger:
        """stepq's structlog logger (``stepq.function``), each line carrying ``values``."""
        made = cls(None, replay)
        made._bind_later = values
        return made

    def _target(self) -> Any:
        if self._bind_later is not None:
            self._logger = structlog.get_logger("stepq.function").bind(**self._bind_later)
            self._bind_later = None
        return self._logger

    def _emit(self, method: str, event: str, *args: Any, **kw: Any) -> None:
        if not self._replay.replaying:
            getattr(self._target(), method)(event, *args, **kw)

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("debug", event, *args, **kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("info", event, *args, **kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("warning", event, *args, **kw)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("error", event, *args, **kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("exception", event, *args, **kw)

    def bind(self, **kw: Any) -> ReplayAwareLogger:
        """A logger adding ``kw`` to each line (a ``LoggerAdapter``'s ``extra`` for a ``logging.Logger``)."""
        logger = self._target()
        if isinstance(logger, logging.Logger | logging.LoggerAdapter):
            return ReplayAwareLogger(logging.LoggerAdapter(logger, kw), self._replay)
        return ReplayAwareLogger(logger.bind(**kw), self._replay)


class _Branches(Generic[T]):
    """What the branches of one ``group.parallel`` produced: their results in order, or the new steps
    they planned (reported together), or that one was skipped (another step is targeted).

    ``with branches:`` marks the replay as inside a parallel group; ``with branches.branch():``
    wraps one branch, keeping what stopped it."""

    def __init__(self, replay: Replay) -> None:
        self._replay = replay
        self.results: list[T] = []
        self.opcodes: list[Opcode] = []
        self.skipped = False
        self.retry_after: dt.timedelta | None = None

    def __enter__(self) -> _Branches[T]:
        self._replay.parallel_depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._replay.parallel_depth -= 1

    @contextlib.contextmanager
    def branch(self) -> Iterator[None]:
        try:
            yield
        except Interrupt as stop:
            self.opcodes.extend(stop.opcodes)
            if stop.retry_after is not None:
                self.retry_after = max(self.retry_after or stop.retry_after, stop.retry_after)
        except Skip:
            self.skipped = True

    def outcome(self) -> tuple[T, ...]:
        if self.opcodes:
            raise Interrupt(self.opcodes, self.retry_after)
        if self.skipped:
            raise Skip()
        return tuple(self.results)


class _GroupBase:
    def __init__(self, replay: Replay) -> None:
        self._replay = replay


class Group(_GroupBase):
    """``ctx.group.parallel``: plan several steps at once; each runs as its own job."""

    async def parallel(self, callables: Sequence[Callable[[], Awaitable[T]]]) -> tuple[T, ...]:
        """Run each callable (typically ``lambda: ctx.step.run(...)``); return their results in order.

        New steps found in the branches are planned together; the function is re-entered once they
        have all finished.
        """
        with _Branches[T](self._replay) as branches:
            for run_branch in callables:
                with branches.branch():
                    branches.results.append(await run_branch())
        return branches.outcome()


class GroupSync(_GroupBase):
    """``ctx.group.parallel`` for plain ``def`` functions: the same, with callables that need no await."""

    def parallel(self, callables: Sequence[Callable[[], T]]) -> tuple[T, ...]:
        """Run each callable (typically ``lambda: ctx.step.run(...)``); see ``Group.parallel``."""
        with _Branches[T](self._replay) as branches:
            for run_branch in callables:
                with branches.branch():
                    branches.results.append(run_branch())
        return branches.outcome()


class _ContextBase:
    def __init__(self, fn: Function, request: ExecutionRequest, replay: Replay) -> None:
        self.event: Event = request.event
        self.events: list[Event] = list(request.events)
        self.run_id: str = request.run_id
        #: Zero-based attempt of the step (or function call) this invocation is retrying.
        self.attempt: int = request.attempt
        self.function_id: str = fn.id
        client_logger = getattr(fn.client, "logger", None)
        if client_logger is not None:
            self.logger = ReplayAwareLogger(client_logger, replay)
        else:
            self.logger = ReplayAwareLogger.stepq_logger(replay, run_id=request.run_id, function=fn.id)


class Context(_ContextBase):
    """What an ``async def`` function gets: the event(s), the run, ``step``, ``group`` and ``logger``."""

    def __init__(self, fn: Function, request: ExecutionRequest, replay: Replay) -> None:
        super().__init__(fn, request, replay)
        self.group = Group(replay)
        client = fn.client
        self.step = Step(replay, client.send if client else None, getattr(client, "serializer", None))


class ContextSync(_ContextBase):
    """What a plain ``def`` function gets: as ``Context``, with step tools that need no ``await``."""

    def __init__(self, fn: Function, request: ExecutionRequest, replay: Replay) -> None:
        super().__init__(fn, request, replay)
        self.group = GroupSync(replay)
        client = fn.client
        self.step = StepSync(
            replay,
            client.send if client else None,
            client.send_sync if client else None,
            getattr(client, "serializer", None),
        )


def make_context(fn: Function, request: ExecutionRequest, replay: Replay) -> Context | ContextSync:
    """The context class that matches the function's kind."""
    return Context(fn, request, replay) if fn.is_async else ContextSync(fn, request, replay)
