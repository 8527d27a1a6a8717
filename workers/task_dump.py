"""What every asyncio task of the process is awaiting, for an operator: ``kill -USR1 <worker pid>``.

A worker that holds jobs without progress shows here where each job's task waits (the whole await
chain, innermost last), as one log line (``worker.tasks``; JSON when logs go to a collector).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import structlog

log = structlog.get_logger("stepq.worker")


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """``file:line function`` of each coroutine ``task`` is suspended in, outermost first, and what
    the innermost one awaits when it is not a coroutine (a future)."""
    out: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if not isinstance(frame, types.FrameType):
            out.append(f"awaits {type(awaited).__name__}")
            break
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return out


def log_tasks() -> None:
    """Log every task of the running loop with its await chain (one ``worker.tasks`` line)."""
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    log.warning("worker.tasks", count=len(tasks), tasks={t.get_name(): await_chain(t) for t in tasks})
