"""A fan-out of 20 parallel steps, for the parallel tests.

Every line written to ``event.data["log"]`` is ``<what> <time.time()>``: ``body`` each time the
function body runs (outside any step), ``step-<i>`` when step ``p<i>`` runs, ``joined`` when the code
after ``ctx.group.parallel`` runs. Step ``p<i>`` sleeps longer the smaller ``i`` is, so the steps
finish in roughly the reverse of their planned order.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-parallel")
N = 20


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {time.time()!r}\n")


def _work(path: str, i: int) -> dict[str, int]:
    time.sleep(0.01 * (N - i))
    _note(path, f"step-{i}")
    return {"i": i, "square": i * i}


@client.create_function(id="fan", trigger=inngest.TriggerEvent(event="test/fan"))
async def fan(ctx: inngest.Context) -> list[Any]:
    path = ctx.event.data["log"]
    _note(path, "body")

    def branch(i: int) -> Callable[[], Awaitable[Any]]:
        return lambda: ctx.step.run(f"p{i}", _work, path, i)

    results = await ctx.group.parallel(tuple(branch(i) for i in range(N)))
    _note(path, "joined")
    return list(results)


@client.create_function(id="fan-fast", trigger=inngest.TriggerEvent(event="test/fan.fast"))
async def fan_fast(ctx: inngest.Context) -> list[Any]:
    """``event.data.n`` no-op steps in parallel: many loads of one run at once on one worker."""

    async def work(i: int) -> int:
        return i * i

    def branch(i: int) -> Callable[[], Awaitable[Any]]:
        return lambda: ctx.step.run(f"f{i}", work, i)

    return list(await ctx.group.parallel(tuple(branch(i) for i in range(ctx.event.data["n"]))))
