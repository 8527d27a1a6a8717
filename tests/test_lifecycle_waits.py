"""A run's end events (``stepq/function.finished``, ``inngest/function.finished``) reach the runs that
wait for them and the cancellation rules that listen to them, on one shard and on four.

They are sent only if something wants them (``waits.waited_names``): a name some wait or rule was
ever registered for (``keys.WAITED_EVENTS``, written before the wait) is looked for in every shard;
any other costs one command. A wait this check missed would time out, a rule would not cancel.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from tests.helpers import StartWorkers, start_run, wait_for_run

pytestmark = pytest.mark.usefixtures("shard_count")


async def test_a_runs_end_resumes_its_waiter_and_cancels_by_its_rule_and_nothing_else(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("lifecycle_waits", n=2)
    # registered with the app: the rule's name is known before any run has the rule
    assert await redis.smembers(keys.WAITED_EVENTS) == {b"inngest/function.finished"}  # type: ignore[misc]
    lone = await start_run(sender, redis, "t-lifecycle-waits-steady", "test/lw.steady", {"n": 0, "tag": "none"})
    assert (await wait_for_run(redis, lone)).status == "completed"
    for name in ("stepq/function.finished", "inngest/function.finished"):  # nothing waits: not stored
        assert not await redis.exists(*keys.every_shard(keys.events_named, name))

    waiters = {
        tag: await start_run(sender, redis, "t-lifecycle-waits-awaiter", "test/lw.awaiter", {"tag": tag})
        for tag in ("a", "b")
    }
    stopped = await start_run(sender, redis, "t-lifecycle-waits-stoppable", "test/lw.stoppable", {"tag": "a"})
    spared = await start_run(sender, redis, "t-lifecycle-waits-stoppable", "test/lw.stoppable", {"tag": "b"})
    for run_id in waiters.values():
        await wait_for_run(redis, run_id, statuses=("waiting",), timeout=20)
    await wait_for_run(redis, stopped, statuses=("sleeping",), timeout=20)
    await wait_for_run(redis, spared, statuses=("sleeping",), timeout=20)
    assert await redis.sismember(keys.WAITED_EVENTS, "stepq/function.finished")  # type: ignore[misc]

    ended = await start_run(sender, redis, "t-lifecycle-waits-steady", "test/lw.steady", {"n": 41, "tag": "a"})
    assert (await wait_for_run(redis, ended)).status == "completed"
    resumed = await wait_for_run(redis, waiters["a"], timeout=20)
    assert (resumed.status, resumed.output) == ("completed", {"n": 42})
    assert (await wait_for_run(redis, stopped, timeout=20)).status == "cancelled"
    # the others are untouched by an end that is not theirs
    still = await wait_for_run(redis, waiters["b"], statuses=("waiting",))
    assert still.status == "waiting"
    assert (await wait_for_run(redis, spared, statuses=("sleeping",))).status == "sleeping"


async def test_a_wait_written_before_the_set_of_waited_names_existed_is_learned_at_a_workers_start(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [first] = start_workers("lifecycle_waits")
    waiter = await start_run(sender, redis, "t-lifecycle-waits-awaiter", "test/lw.awaiter", {"tag": "old"})
    await wait_for_run(redis, waiter, statuses=("waiting",), timeout=20)
    first.stop()
    await redis.delete(keys.WAITED_EVENTS)  # as an older stepq left it: the wait, and no set
    start_workers("lifecycle_waits")
    assert await redis.sismember(keys.WAITED_EVENTS, "stepq/function.finished")  # type: ignore[misc]
    ended = await start_run(sender, redis, "t-lifecycle-waits-steady", "test/lw.steady", {"n": 1, "tag": "old"})
    assert (await wait_for_run(redis, ended)).status == "completed"
    resumed = await wait_for_run(redis, waiter, timeout=20)
    assert (resumed.status, resumed.output) == ("completed", {"n": 2})
