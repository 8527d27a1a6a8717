"""``ctx``: what a function sees on each invocation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from stepq.event import Event
from stepq.function import Function
from stepq.replay import ExecutionRequest, Interrupt, Replay, Skip
from stepq.step import Step, SyncStep


class ReplayAwareLogger:
    """A structlog logger that stays quiet while memoized steps replay, so each line prints once."""

    def __init__(self, logger: Any, replay: Replay) -> None:
        self._logger = logger
        self._replay = replay

    def _emit(self, method: str, event: str, **kw: Any) -> None:
        if not self._replay.replaying:
            getattr(self._logger, method)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._emit("exception", event, **kw)

    def bind(self, **kw: Any) -> ReplayAwareLogger:
        return ReplayAwareLogger(self._logger.bind(**kw), self._replay)


class Group:
    """``ctx.group.parallel``: plan several steps at once; each runs as its own job."""

    def __init__(self, replay: Replay) -> None:
        self._replay = replay

    async def parallel(self, callables: Sequence[Callable[[], Awaitable[Any]]]) -> tuple[Any, ...]:
        """Run each callable (typically ``lambda: ctx.step.run(...)``); return their results in order.

        New steps found in the branches are planned together; the function is re-entered once they
        have all finished.
        """
        results: list[Any] = []
        opcodes = []
        skipped = False
        retry_after: dt.timedelta | None = None
        self._replay.parallel_depth += 1
        try:
            for branch in callables:
                try:
                    results.append(await branch())
                except Interrupt as stop:
                    opcodes.extend(stop.opcodes)
                    if stop.retry_after is not None:
                        retry_after = max(retry_after or stop.retry_after, stop.retry_after)
                except Skip:
                    skipped = True
        finally:
            self._replay.parallel_depth -= 1
        if opcodes:
            raise Interrupt(opcodes, retry_after)
        if skipped:
            raise Skip()
        return tuple(results)


class _ContextBase:
    def __init__(self, fn: Function, request: ExecutionRequest, replay: Replay) -> None:
        self.event: Event = request.event
        self.events: list[Event] = list(request.events)
        self.run_id: str = request.run_id
        #: Zero-based attempt of the step (or function call) this invocation is retrying.
        self.attempt: int = request.attempt
        self.function_id: str = fn.id
        self.group = Group(replay)
        self.logger = ReplayAwareLogger(
            structlog.get_logger("stepq.function").bind(run_id=request.run_id, function=fn.id), replay
        )


class Context(_ContextBase):
    """What an ``async def`` function gets: the event(s), the run, ``step``, ``group`` and ``logger``."""

    def __init__(self, fn: Function, request: ExecutionRequest, replay: Replay) -> None:
        super().__init__(fn, request, replay)
        self.step = Step(replay, fn.client.send if fn.client is not None else None)


class ContextSync(_ContextBase):
    """What a plain ``def`` function gets: as ``Context``, with step tools that need no ``await``."""

    def __init__(self, fn: Function, request: ExecutionRequest, replay: Replay) -> None:
        super().__init__(fn, request, replay)
        client = fn.client
        self.step = SyncStep(replay, client.send if client else None, client.send_sync if client else None)


def make_context(fn: Function, request: ExecutionRequest, replay: Replay) -> Context | ContextSync:
    """The context class that matches the function's kind."""
    return Context(fn, request, replay) if fn.is_async else ContextSync(fn, request, replay)
