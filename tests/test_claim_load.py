"""A claim loads the runs of the jobs it claims (claim_jobs.lua with the prelude's load_run): a cold job
(a run's first, a wake-up, a job retaken after a crash) starts without a load_run round trip, and the
load's side effects and refusals are those load_run has.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys, scripts
from stepq.runtime.connection import connect
from stepq.runtime.job_queue import ClaimedJob, JobQueue
from stepq.runtime.jobs import JobSpec, wake_job_id
from stepq.runtime.queries import get_run
from stepq.runtime.store import CachedRun, ClaimLoad, LoadedRun, LoadRefused, Outcome, RunStore
from stepq.workers.embedded import EmbeddedRedis
from tests import monitor
from tests.helpers import StartWorkers, WorkerOn, run_memo, run_stack, start_run, wait_for_run

APP = "t-claim"


def script_calls(port: int, seconds: float) -> list[str]:
    """The scripts (their SHA1s) clients call with EVALSHA during ``seconds``, read with MONITOR."""
    calls = monitor.commands(port, seconds)
    return [args[1].decode() for _, args in calls if args[0].upper() == b"EVALSHA" and len(args) > 1]


def sha(name: str) -> str:
    return hashlib.sha1(scripts.source(name).encode()).hexdigest()


async def test_an_idle_worker_starts_a_runs_first_step_with_one_claim_and_no_load(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # no idle check within the window: the one claim is the one the run's first job woke
    worker = WorkerOn("queue_app", tmp_path, private_redis.url, env={"STEPQ_IDLE_CHECK": "60"})
    redis = connect(private_redis.url)
    client = stepq.Client("t-claim-sender", redis_url=private_redis.url)
    try:
        worker.wait_ready()
        warm = await start_run(client, redis, "short", "test/short", {})  # every script is loaded
        await wait_for_run(redis, warm, timeout=10)
        await asyncio.sleep(1)  # past the run's end
        watching = asyncio.create_task(asyncio.to_thread(script_calls, private_redis.port, 4.0))
        await asyncio.sleep(0.5)  # MONITOR is on
        run_id = await start_run(client, redis, "short", "test/short", {})
        view = await wait_for_run(redis, run_id, timeout=10)
        calls = await watching
    finally:
        await client.aclose()
        await redis.aclose()
        worker.stop()

    assert (view.status, view.output) == ("completed", "done")
    assert calls.count(sha("claim_jobs")) == 1, calls
    assert calls.count(sha("load_run")) == 0, calls
    # the step's commit hands over the run's last invocation, which finishes it: no claim between
    assert calls.count(sha("apply_plan")) == 2, calls


async def _create(store: RunStore, run_id: str) -> JobSpec:
    await store.create_run(
        run_id=run_id, fn_slug="t-claim-fn", app_id=APP, events=[stepq.Event(name="c")], dedupe_key=None
    )
    return JobSpec(run_id, 0)


def _queue(redis: Redis, store: RunStore, token: str, lease_ms: int = 10_000) -> JobQueue:
    return JobQueue(redis, store.scripts, APP, shard=0, lease_token=token, lease_ms=lease_ms, mover_lease_ms=10_000)


async def _claim_one(queue: JobQueue, **kwargs: object) -> ClaimedJob:
    claim = await queue.claim(8, **kwargs)  # type: ignore[arg-type]
    assert len(claim.jobs) == 1, claim
    return claim.jobs[0]


@pytest.mark.parametrize("how", ["cancelled", "missing", "stale"])
async def test_a_claimed_job_whose_run_ended_or_moved_meanwhile_is_refused_as_load_run_refuses_it(
    redis: Redis, how: str
) -> None:
    store = RunStore(redis)
    run_id = f"01CLAIM{how.upper():0<19}"
    job = await _create(store, run_id)
    # A first worker claims the job (its lock keeps it from being dropped)...
    first = _queue(redis, store, "first", lease_ms=200)
    held = await _claim_one(first)
    assert isinstance(held.preload, ClaimLoad)
    # ...the run ends or moves on meanwhile...
    if how == "cancelled":
        assert (await store.cancel(run_id, "test")).outcome is Outcome.OK
    elif how == "missing":
        await redis.delete(keys.run(run_id))
    else:
        await redis.rpush(keys.stack(run_id), "elsewhere")  # type: ignore[misc]
    # ...and the worker dies: its lease lapses and another worker claims the job.
    await asyncio.sleep(0.3)
    taken = await _claim_one(_queue(redis, store, "second"))

    assert taken.job_id == job.job_id and taken.job_try == 2
    assert isinstance(taken.preload, ClaimLoad)
    refused = await store.claimed(job, taken.preload)
    assert refused == await store.load(job)  # what load_run says of the same job
    expected = {
        "cancelled": LoadRefused(Outcome.DONE, "cancelled"),
        "missing": LoadRefused(Outcome.MISSING, "[]"),
        "stale": LoadRefused(Outcome.STALE, "[1]"),
    }[how]
    assert refused == expected


async def test_a_claimed_load_sends_only_the_memo_entries_the_worker_names(redis: Redis) -> None:
    store = RunStore(redis)
    run_id = "01CLAIMKNOWN00000000000000"
    job = await _create(store, run_id)
    await redis.rpush(keys.stack(run_id), "a", "b")  # type: ignore[misc]
    await redis.hset(keys.memo(run_id), mapping={"a": b"\x01", "b": b"\x02"})  # type: ignore[misc]
    job = JobSpec(run_id, 2)
    await redis.delete(keys.queue(0, APP))
    await store.enqueue_for_run(run_id, APP, job, 0)
    known = CachedRun([stepq.Event(name="c")], {"a": 1}, ("a",))

    claimed = await _claim_one(_queue(redis, store, "w"), known={run_id: known})

    assert isinstance(claimed.preload, ClaimLoad) and claimed.preload.known is known
    assert claimed.preload.reply[4] is None  # no events: the worker has them
    assert claimed.preload.reply[9:] == [b"b", b"\x02"]  # only the entry it lacks
    loaded = await store.claimed(job, claimed.preload)
    assert isinstance(loaded, LoadedRun)
    assert (loaded.stack, loaded.memo, loaded.position) == (("a", "b"), {"a": 1, "b": 2}, 2)


async def test_a_job_the_claim_cannot_read_is_claimed_without_a_load_and_others_are_loaded(redis: Redis) -> None:
    store = RunStore(redis)
    run_id = "01CLAIMMIXED00000000000000"
    job = await _create(store, run_id)
    for job_id, payload in [
        ("bad-bytes-0", b"\xc1\xff"),
        ("other-fn-0", b"\x85\xa1t\xc0\xa1f\xa3xyz\xa1a\x90\xa1k\x80\xa2et\x00"),
    ]:
        await redis.set(keys.job(job_id), payload)
        await redis.zadd(keys.queue(0, APP), {job_id: 0})

    claim = await _queue(redis, store, "w").claim(8)

    by_id = {c.job_id: c for c in claim.jobs}
    assert set(by_id) == {"bad-bytes-0", "other-fn-0", job.job_id}
    assert by_id["bad-bytes-0"].preload is None and by_id["other-fn-0"].preload is None
    preload = by_id[job.job_id].preload
    assert isinstance(preload, ClaimLoad)
    loaded = await store.claimed(job, preload)
    assert isinstance(loaded, LoadedRun) and loaded.fence == "1" and loaded.first_start


async def test_a_job_the_worker_still_runs_is_claimed_again_without_a_load(redis: Redis) -> None:
    """Its lease lapsed while Redis was away: the worker holds the run's fence, a load would take it."""
    store = RunStore(redis)
    run_id = "01CLAIMHELD000000000000000"
    job = await _create(store, run_id)
    queue = _queue(redis, store, "w", lease_ms=100)
    first = await _claim_one(queue)
    await asyncio.sleep(0.2)

    again = await _claim_one(queue, held={first.job_id})

    assert again.job_id == job.job_id and again.preload is None
    assert await redis.hget(keys.run(run_id), "fence") == b"1"  # type: ignore[misc]


async def test_a_wake_up_retaken_from_a_killed_worker_is_loaded_with_a_new_fence(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    # A holds the step after the sleep for a minute; it is killed there
    [a] = start_workers("queue_app", env={"STEPQ_LEASE": "1", "T_QUEUE_HOLD_S": "60"})
    run_id = await start_run(sender, redis, "nap-hold", "test/nap.hold", {})
    nap = hashlib.sha1(b"nap").hexdigest()
    deadline = time.monotonic() + 15
    while await run_stack(redis, run_id) != [nap]:
        assert time.monotonic() < deadline, "the run did not wake up"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    fence_a = int(await redis.hget(keys.run(run_id), "fence"))  # type: ignore[misc]
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(5)
    assert await redis.exists(keys.job(wake_job_id(run_id, 0)))  # the wake-up job is still queued

    # B holds the same step for 2 s: long enough to see the fence its claim took
    [b] = start_workers("queue_app", env={"STEPQ_LEASE": "1", "T_QUEUE_HOLD_S": "2"})
    deadline = time.monotonic() + 10
    while int(await redis.hget(keys.run(run_id), "fence")) == fence_a:  # type: ignore[misc]
        assert time.monotonic() < deadline, "no worker took the wake-up job over"
        await asyncio.sleep(0.02)
    assert int(await redis.hget(keys.run(run_id), "fence")) == fence_a + 1  # type: ignore[misc]
    view = await get_run(redis, run_id)
    assert view is not None and view.status == "running"
    assert await run_stack(redis, run_id) == [nap]  # the sleep was memoized once
    assert (await run_memo(redis, run_id))[nap] == b"\xc0"

    done = await wait_for_run(redis, run_id, timeout=20)
    assert (done.status, done.output) == ("completed", "held")
    assert any(e.get("run_id") == run_id and e.get("event") == "invocation" for e in b.logs())


async def test_a_claims_chores_check_reports_a_due_outbox_message_and_an_overdue_timer(redis: Redis) -> None:
    """What an idle worker's claims look for instead of visiting every shard for its chores
    (workers/shard_chores.py): nothing without a check; with one, each flag only once due."""
    store = RunStore(redis)
    queue = _queue(redis, store, "w")
    now = int(time.time() * 1000)
    await redis.zadd(keys.outbox(0), {"0000:run:later": now + 60_000})
    await redis.zadd(keys.timers(0), {"q|r|1": now - 30_000})  # overdue by 30 s, not by 60
    flags = await queue.claim(8, chores_overdue_ms=60_000)
    assert (flags.outbox_due, flags.timers_overdue) == (False, False)
    await redis.zadd(keys.outbox(0), {"0000:run:due": now - 1})
    await redis.zadd(keys.timers(0), {"q|r|2": now - 61_000})
    flags = await queue.claim(8, chores_overdue_ms=60_000)
    assert (flags.outbox_due, flags.timers_overdue) == (True, True)
    unchecked = await queue.claim(8)
    assert (unchecked.outbox_due, unchecked.timers_overdue) == (False, False)


async def test_a_renewal_racing_a_jobs_end_does_not_call_its_lease_lost(redis: Redis) -> None:
    """The renewer sends a job's id just as the job's commit ends it: that job is not lost (no
    ``lease.lost`` warning); one whose lock another worker holds is."""
    store = RunStore(redis)
    for i in range(3):
        await redis.set(keys.job(f"plain{i}-0"), b"not a stepq job")
        await redis.zadd(keys.queue(0, APP), {f"plain{i}-0": 0})
    queue = _queue(redis, store, "w")
    claimed = sorted(job.job_id for job in (await queue.claim(8)).jobs)
    assert claimed == ["plain0-0", "plain1-0", "plain2-0"]
    assert await queue.end("plain0-0")  # committed and ended
    await redis.set(keys.in_progress("plain1-0"), b"another-worker")  # taken over after a lapse
    assert await queue.renew(claimed) == [True, False, True]
