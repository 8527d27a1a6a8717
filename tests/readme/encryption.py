"""README's encryption block: the app's processes share their keys through STEPQ_ENCRYPTION_KEYS;
a worker runs the refund, and Redis never holds the card number or the outputs in plaintext."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import stepq

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__: list[str] = []

CARD = "4242424242424242"


async def check(block: ReadmeBlock) -> None:
    # What the block's comment asks of a deployment: the same keys in every process.
    block.setenv("STEPQ_ENCRYPTION_KEYS", f"{secrets.token_hex(32)},{secrets.token_hex(32)}")
    block.start_worker()
    client = block.load().client

    [event_id] = await client.send(
        stepq.Event(name="payments/refund", data={"encrypted": {"card": CARD}, "order_id": 7})
    )

    view = await block.run_of("refund", event_id)
    assert view.status == "completed", view.error
    # The run's output is stored encrypted: what Redis holds is not the plaintext.
    assert "refunded 4242" not in str(view.output), view.output
    async for key in block.redis.scan_iter():
        kind = await block.redis.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [await block.redis.get(key) or b""]
        elif kind == b"hash":
            values = list((await block.redis.hgetall(key)).values())  # type: ignore[misc]
        elif kind == b"list":
            values = await block.redis.lrange(key, 0, -1)  # type: ignore[misc]
        for value in values:
            assert CARD.encode() not in value and b"refunded 4242" not in value, (key, value)
