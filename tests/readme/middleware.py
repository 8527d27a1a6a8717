"""README's middleware block: a worker runs its function, and the worker's output shows both
middlewares at work (the client's on every invocation, the function's on its send)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import stepq

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__: list[str] = []


async def check(block: ReadmeBlock) -> None:
    worker = block.start_worker()
    client = block.load().client

    [event_id] = await client.send(stepq.Event(name="shop/checkout", data={}))

    view = await block.run_of("checkout", event_id)
    assert (view.status, view.output) == ("completed", "done"), view
    expected = ["total: ", "output=42", "sending ['shop/receipt']"]
    deadline = time.monotonic() + 10
    while not all(text in worker.stdout() for text in expected):  # printed after the run's state changed
        assert time.monotonic() < deadline, f"the worker printed:\n{worker.stdout()}"
        await asyncio.sleep(0.05)
