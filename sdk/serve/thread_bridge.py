"""Run a coroutine to completion from synchronous code (a WSGI request), in a fresh event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def run_sync(coro: Awaitable[T]) -> T:
    """``coro``'s result, run in a fresh event loop; in a thread that already runs a loop (WSGI
    called from async code), a helper thread runs it."""

    async def main() -> T:
        return await coro

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(main()))
        except BaseException as exc:  # pragma: no cover - handle() does not raise
            errors.append(exc)

    thread = threading.Thread(target=target, name="stepq-serve-wsgi")
    thread.start()
    thread.join()
    if errors:  # pragma: no cover
        raise errors[0]
    return box[0]
