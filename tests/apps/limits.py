"""Functions that push against a run's limits on every path a value can take into its state.

The tests run these with small limits (``STEPQ_MAX_STATE_BYTES``, ``STEPQ_MAX_OUTPUT_BYTES``) so that
the data involved stays small; ``event.data`` says how many steps and how many bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="t-limits")


def _branches(ctx: inngest.Context, make: Callable[[int], Awaitable[Any]]) -> tuple[Callable[[], Awaitable[Any]], ...]:
    return tuple((lambda i=i: make(i)) for i in range(ctx.event.data["n"]))


@client.create_function(id="wide", trigger=inngest.TriggerEvent(event="limits/wide"), retries=0)
async def wide(ctx: inngest.Context) -> int:
    """``n`` no-op steps in one parallel group."""

    async def noop() -> None:
        return None

    results = await ctx.group.parallel(_branches(ctx, lambda i: ctx.step.run(f"w{i}", noop)))
    return len(results)


@client.create_function(id="heavy-parallel", trigger=inngest.TriggerEvent(event="limits/heavy.parallel"), retries=0)
async def heavy_parallel(ctx: inngest.Context) -> int:
    """``n`` parallel steps returning ``bytes`` bytes each."""
    size = int(ctx.event.data["bytes"])

    async def blob(i: int) -> str:
        return str(i % 10) * size

    results = await ctx.group.parallel(_branches(ctx, lambda i: ctx.step.run(f"h{i}", blob, i)))
    return len(results)


@client.create_function(id="heavy-waits", trigger=inngest.TriggerEvent(event="limits/heavy.waits"), retries=0)
async def heavy_waits(ctx: inngest.Context) -> int:
    """``n`` parallel waits for ``limits/blob`` events carrying this run's ``tag``."""
    tag = ctx.event.data["tag"]
    results = await ctx.group.parallel(
        _branches(
            ctx,
            lambda i: ctx.step.wait_for_event(
                f"wait{i}",
                event="limits/blob",
                timeout="1m",
                if_exp=f"async.data.tag == '{tag}' && async.data.i == {i}",
            ),
        )
    )
    return sum(1 for r in results if r is not None)


@client.create_function(id="heavy-invokes", trigger=inngest.TriggerEvent(event="limits/heavy.invokes"), retries=0)
async def heavy_invokes(ctx: inngest.Context) -> int:
    """``n`` parallel invokes of ``big-child``, each returning ``bytes`` bytes."""
    size = ctx.event.data["bytes"]
    results = await ctx.group.parallel(
        _branches(ctx, lambda i: ctx.step.invoke(f"child{i}", function=big_child, data={"bytes": size, "i": i}))
    )
    return len(results)


@client.create_function(id="big-child", trigger=inngest.TriggerEvent(event="limits/big.child"), retries=0)
async def big_child(ctx: inngest.Context) -> str:
    """Returns ``bytes`` bytes (no step): the run's own output is what is measured."""
    return "c" * int(ctx.event.data["bytes"])


@client.create_function(id="invoke-big", trigger=inngest.TriggerEvent(event="limits/invoke.big"), retries=0)
async def invoke_big(ctx: inngest.Context) -> dict[str, Any]:
    """Invokes ``big-child`` with ``bytes`` and reports how the invoke step ended."""
    try:
        out = await ctx.step.invoke("child", function=big_child, data={"bytes": ctx.event.data["bytes"]})
    except inngest.StepError as exc:
        return {"error": exc.name, "message": exc.message}
    return {"size": len(out)}
