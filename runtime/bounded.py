"""Independent Redis work done at once, a bounded number at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def gather_bounded(limit: int, work: Iterable[Awaitable[T]]) -> list[T]:
    """Await every item of ``work``, at most ``limit`` at once (a Redis round trip each, or a few:
    at once, their latencies overlap; bounded, one call does not take every connection of a pool).
    Results in ``work``'s order; the first exception propagates, as ``asyncio.gather``'s does."""
    gate = asyncio.Semaphore(limit)

    async def one(item: Awaitable[T]) -> T:
        async with gate:
            return await item

    return await asyncio.gather(*(one(item) for item in work))
