"""README's blocks that send events: a client of the app they send to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import stepq as inngest
from stepq.runtime import keys

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__ = ["client", "inngest"]

client = inngest.Client("billing")


async def check(block: ReadmeBlock) -> None:
    """The block sends one event: it is stored."""
    await block.run()
    stored = [key async for key in block.redis.scan_iter(match=keys.event("*"))]
    assert len(stored) == 1, stored
