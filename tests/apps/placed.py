"""Functions of every placement rule (runtime/placement.py), for tests/test_placement_shards.py.

Each step appends ``<function> <key> <run id> start|end <monotonic ns> <pid>`` to
``event.data["log"]`` (one clock for every process of the machine), so a test replays which steps
executed at once across worker processes and shards (``key`` is ``event.data["user"]``).
"""

from __future__ import annotations

import os
import time

import stepq as inngest

client = inngest.Inngest(app_id="t-placed")

USER = "event.data.user"


def _span(ctx: inngest.Context, function: str) -> str:
    data = ctx.event.data
    if "log" not in data:  # a batch's or a debounce's run: nothing to replay
        return "-"
    key = str(data.get("user", "-"))
    with open(data["log"], "a") as f:
        f.write(f"{function} {key} {ctx.run_id} start {time.monotonic_ns()} {os.getpid()}\n")
    time.sleep(float(data.get("ms", 20)) / 1000)
    with open(data["log"], "a") as f:
        f.write(f"{function} {key} {ctx.run_id} end {time.monotonic_ns()} {os.getpid()}\n")
    return key


def _simple(fn_id: str, **flow: object) -> object:
    @client.create_function(id=fn_id, trigger=inngest.TriggerEvent(event=f"placed/{fn_id}"), **flow)  # type: ignore[arg-type]
    async def handler(ctx: inngest.Context) -> str:
        return await ctx.step.run("work", _span, ctx, fn_id)

    return handler


# spread: no flow-control state
plain = _simple("plain")
# whole function: a limit without a key
whole_rate = _simple("whole-rate", rate_limit=inngest.RateLimit(limit=10, period=60_000))
throttled = _simple("throttled", throttle=inngest.Throttle(limit=5, period=1_000))
# by key: every piece of state keyed by event.data.user
keyed_rate = _simple("keyed-rate", rate_limit=inngest.RateLimit(limit=3, period=60_000, key=USER))
keyed_throttle = _simple("keyed-throttle", throttle=inngest.Throttle(limit=2, period=1_000, key=USER))
idem = _simple("idem", idempotency=USER)
single = _simple("single", singleton=inngest.Singleton(key=USER, mode="skip"))
debounced = _simple("debounced", debounce=inngest.Debounce(period=60_000, key=USER))
batched = _simple("batched", batch_events=inngest.Batch(max_size=100, timeout=60_000, key=USER))
# concurrency, executed by workers: function-wide (3) with a key (1 per user), and keyed only
limited = _simple("limited", concurrency=[inngest.Concurrency(limit=3), inngest.Concurrency(limit=1, key=USER)])
keyed_limited = _simple(
    "keyed-limited",
    concurrency=[inngest.Concurrency(limit=1, key=USER), inngest.RunConcurrency(limit=1, key=USER)],
    throttle=inngest.Throttle(limit=50, period=1_000, key=USER),
)
# shared: one env-scoped key counted across two functions
shared_a = _simple("shared-a", concurrency=[inngest.Concurrency(limit=1, key=USER, scope="env")])
shared_b = _simple("shared-b", concurrency=[inngest.Concurrency(limit=1, key=USER, scope="env")])
