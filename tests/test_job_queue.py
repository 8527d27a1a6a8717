"""The job queue under real workers: idle workers wait without polling, a run hands its next job to
the worker that committed its step without starving queued work, and delayed jobs wake on time
even when the worker that meant to wake for them dies.

Every test runs real ``stepq worker`` processes; the idle test counts the commands Redis receives
with MONITOR on a private server, so that nothing else is counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.connection import connect
from stepq.runtime.queries import get_run
from stepq.workers.embedded import EmbeddedRedis
from tests import monitor
from tests.helpers import (
    StartWorkers,
    WorkerOn,
    run_stack,
    start_run,
    wait_for_run,
)

APP = "t-queue"


def commands_sent(port: int, seconds: float) -> list[str]:
    """The commands clients send Redis during ``seconds``, read with MONITOR (commands that scripts
    run inside Redis, shown as ``[0 lua]``, are left out: they cost no round trip)."""
    return [args[0].decode().upper() for client, args in monitor.commands(port, seconds) if client != b"lua"]


async def test_an_idle_worker_sends_redis_at_most_about_one_command_a_second(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    worker = WorkerOn("queue_app", tmp_path, private_redis.url)
    try:
        worker.wait_ready()
        await asyncio.sleep(2)  # past its start
        window_s = 20.0
        sent = await asyncio.to_thread(commands_sent, private_redis.port, window_s)
        assert worker.alive()
        print(f"\n{len(sent)} commands in {window_s:g} s: {sorted(set(sent))}")
        assert len(sent) <= window_s, sent  # arq's polling worker: about 170 a second
        assert "BLPOP" in sent  # it waits on the ready list...
        # ...and a job sent now starts at once, without a poll
        redis = connect(private_redis.url)
        client = stepq.Client("t-queue-sender", redis_url=private_redis.url)
        try:
            run_id = await start_run(client, redis, "short", "test/short", {})
            view = await wait_for_run(redis, run_id, timeout=10)
            assert (view.status, view.output) == ("completed", "done")
        finally:
            await client.aclose()
            await redis.aclose()
    finally:
        worker.stop()


async def test_a_long_run_hands_itself_its_steps_but_does_not_starve_a_queued_run(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    # one slot: the long run's hand-offs and the queued run compete for it
    start_workers("queue_app", env={"STEPQ_CONCURRENCY": "1"})
    long_id = await start_run(sender, redis, "chain", "test/chain", {"n": 600})

    async def started() -> bool:
        return len(await run_stack(redis, long_id)) >= 5

    deadline = time.monotonic() + 20
    while not await started():
        assert time.monotonic() < deadline, "the long run did not start"
        await asyncio.sleep(0.01)
    short_id = await start_run(sender, redis, "short", "test/short", {})
    short = await wait_for_run(redis, short_id, timeout=30)
    steps_then = len(await run_stack(redis, long_id))
    assert short.status == "completed"
    assert steps_then < 600, "the queued run waited for all 600 steps of the long one"

    done = await wait_for_run(redis, long_id, timeout=120)
    assert (done.status, done.output) == ("completed", sum(range(600)))
    assert len(done.steps) == 600  # each step committed once, hand-offs or not


async def test_when_the_worker_that_means_to_wake_a_sleep_dies_another_wakes_it(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    workers = start_workers("queue_app", n=2)
    run_id = await start_run(sender, redis, "nap", "test/nap", {})
    began = time.time()

    # The sleep's wake-up is a delayed job: one worker (the mover) keeps a timer for it.
    deadline = time.monotonic() + 10
    while True:
        view = await get_run(redis, run_id)
        holder = await redis.get(keys.mover(0, APP))
        if view is not None and view.status == "sleeping" and holder and await redis.exists(keys.wake_at(0, APP)):
            break
        assert time.monotonic() < deadline, "the run did not go to sleep with a mover watching"
        await asyncio.sleep(0.02)
    mover_pid = int(holder.decode().split(":")[1])
    [mover] = [w for w in workers if w.pid == mover_pid]
    os.kill(mover.pid, signal.SIGKILL)
    mover.proc.wait(5)

    done = await wait_for_run(redis, run_id, timeout=45)
    assert (done.status, done.output) == ("completed", "woke")
    assert time.time() - began >= 2.0  # no earlier than the sleep's end
    [survivor] = [w for w in workers if w is not mover]
    assert survivor.alive()
    assert any(e.get("run_id") == run_id and e.get("event") == "invocation" for e in survivor.logs())


async def test_a_sleep_enqueued_after_a_longer_one_still_wakes_first(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    """The mover keeps one timer, at the earliest delayed job it knows: a shorter sleep enqueued
    later wakes a worker, which takes the mover's role with the earlier timer."""
    # no idle checks within the test: only the mover's timer (or a token) can wake a sleep
    start_workers("queue_app", n=2, env={"STEPQ_IDLE_CHECK": "60"})
    long_id = await start_run(sender, redis, "nap-for", "test/nap.for", {"ms": 6000})
    deadline = time.monotonic() + 10
    while await redis.get(keys.wake_at(0, APP)) is None:  # a mover keeps its timer at the long sleep
        assert time.monotonic() < deadline, "no worker took the long sleep's timer"
        await asyncio.sleep(0.02)
    sent = time.time()
    short_id = await start_run(sender, redis, "nap-for", "test/nap.for", {"ms": 1000})

    short = await wait_for_run(redis, short_id, timeout=30)
    assert short.status == "completed" and short.output >= sent + 1.0  # not before its end...
    long_view = await get_run(redis, long_id)
    assert long_view is not None and long_view.status == "sleeping"  # ...and not after the long one's
    done = await wait_for_run(redis, long_id, timeout=30)
    assert done.status == "completed" and done.output > short.output
