"""A 30-day sleep survives its arq job key expiring: the timer reconciler re-enqueues the wake-up.

arq drops a job whose key is gone (``job ... expired``), and stepq's job keys expire some time after
their due time, so a long sleep must not depend on the key living. The test makes 30 days pass for
one run: its wake job and timer become due now and its job key disappears, as if it had expired.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.codec import unpack
from tests.helpers import StartWorkers, read_lines, run_memo, run_stack, sha1, start_run, wait_for_run

APP = "t-long-sleep"
DAY_MS = 86_400_000


@pytest.mark.parametrize("queue_entry", ["due-now", "gone"])
async def test_a_30_day_sleep_wakes_after_its_job_key_expired(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, queue_entry: str
) -> None:
    [worker] = start_workers("long_sleep", env={"STEPQ_TIMER_SWEEP": "1", "STEPQ_TIMER_OVERDUE": "1"})
    log = tmp_path / "after.log"
    run_id = await start_run(sender, redis, "month-nap", "test/month-nap", {"log": str(log)})

    parked = await wait_for_run(redis, run_id, statuses=("sleeping",), timeout=15)
    assert parked.wake_at_ms is not None and parked.wake_at_ms >= time.time() * 1000 + 29 * DAY_MS
    [(job_id, score)] = await redis.zrange(keys.queue(0, APP), 0, -1, withscores=True)
    assert int(score) == parked.wake_at_ms
    job_key = keys.job(job_id.decode())
    assert await redis.exists(job_key) == 1
    [(timer, timer_score)] = await redis.zrange(keys.timers(0), 0, -1, withscores=True)
    assert int(timer_score) == parked.wake_at_ms and run_id in timer.decode()

    # 30 days later: the wake-up is due, and arq's job key has expired.
    now = int(time.time() * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        if queue_entry == "due-now":
            pipe.zadd(keys.queue(0, APP), {job_id: now}, xx=True)
        else:  # arq already found the key gone and dropped the job
            pipe.zrem(keys.queue(0, APP), job_id)
        pipe.zadd(keys.timers(0), {timer: now}, xx=True)
        pipe.delete(job_key)
        await pipe.execute()

    done = await wait_for_run(redis, run_id, timeout=30)

    assert done.status == "completed", done.error
    [line] = read_lines(log)
    assert done.output["after"] == float(line.split()[2])
    assert await run_stack(redis, run_id) == [sha1("before"), sha1("month"), sha1("after")]
    memo = {key: unpack(value) for key, value in (await run_memo(redis, run_id)).items()}
    assert memo[sha1("month")] is None  # a finished sleep is memoized as null
    revived = [e for e in worker.logs() if e.get("event") == "timer.revived" and e.get("run_id") == run_id]
    assert len(revived) == 1, revived
    assert await redis.zcard(keys.timers(0)) == 0
