"""README's "Flow control" block on concurrency: the payment API call it limits (recording when each
call ran, in the test Redis), and a check that the limits held and a waiting run said why."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import redis

import stepq as inngest
from stepq.runtime.queries import get_run

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__ = ["call_payment_api", "sync_account_data"]

CALLS = "readme:flow:calls"


def call_payment_api(data: dict[str, Any]) -> str:
    """Stands in for the payment API: 0.1 s a call; records ``<customer> <start> <end>``."""
    start = time.monotonic()
    time.sleep(0.1)
    with redis.Redis.from_url(os.environ["STEPQ_REDIS_URL"]) as r:
        r.rpush(CALLS, f"{data['customer_id']} {start} {time.monotonic()}")
    return f"paid-{data['customer_id']}"


def sync_account_data(account: str) -> int:
    time.sleep(0.05)
    return 1


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    current = best = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


async def check(block: ReadmeBlock) -> None:
    """Eight payments of one customer and four of another: 2 at once per customer, and a waiting
    run's record says which limit holds it."""
    await block.redis.delete(CALLS)
    block.start_worker()
    client = block.load().client
    ids = await client.send(
        [inngest.Event(name="payment/requested", data={"customer_id": "c1", "plan": "free"}) for _ in range(8)]
        + [inngest.Event(name="payment/requested", data={"customer_id": "c2", "plan": "vip"}) for _ in range(4)]
    )
    views = [await block.run_of("charge-customer", event_id) for event_id in ids]
    assert {view.status for view in views} == {"completed"}, views
    assert any(view.waited and 'for key "c1"' in view.waited for view in views), [v.waited for v in views]
    raw = [line.decode().split() for line in await block.redis.lrange(CALLS, 0, -1)]  # type: ignore[misc]
    for customer in ("c1", "c2"):
        spans = [(float(s), float(e)) for c, s, e in raw if c == customer]
        assert _most_at_once(spans) == 2, (customer, spans)
    [sync] = await client.send(inngest.Event(name="account/sync.requested", data={"account": "a1"}))
    done = await block.run_of("sync-account", sync)
    assert done.status == "completed" and done.output == 1
    run = await get_run(block.redis, done.run_id)
    assert run is not None and run.held is None
