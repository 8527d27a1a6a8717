"""stepq on a Redis Cluster (tests/cluster.py: 3 masters, a replica each), served by real workers.

Runs are created in every one of the 32 shards (so on every master); their steps, sleep, retried
step and parallel steps all happen within the run's shard. Two worker processes serve every shard;
one is SIGKILLed mid-run, and in another test a master is SIGKILLed and its replica promoted.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

import stepq
from stepq.runtime import keys, shards
from stepq.runtime.connection import close, open_redis
from stepq.runtime.queries import get_run
from stepq.runtime.store import RunStore
from tests.apps.cluster_app import BRANCHES, expected, mixed
from tests.cluster import LocalCluster
from tests.helpers import REDIS_URL, TERMINAL, WorkerOn, run_statuses, use_shards

#: Quick idle checks (each shard is checked every 32 x 0.25 s by each worker) and short leases, so
#: that work a killed worker held moves on within seconds.
WORKER_ENV = {"STEPQ_IDLE_CHECK": "0.25", "STEPQ_LEASE": "3"}


def start_workers(tmp_path: Path, url: str, n: int) -> list[WorkerOn]:
    workers = []
    for i in range(n):
        directory = tmp_path / f"worker-{i}"
        directory.mkdir(exist_ok=True)
        workers.append(WorkerOn("cluster_app", directory, url, env=WORKER_ENV))
    for worker in workers:
        worker.wait_ready(timeout=30)
    return workers


async def create_runs(redis: Any, count: int, log: Path, **data: Any) -> dict[str, int]:
    """``count`` runs of ``mixed``, spread over every shard in turn; run id -> its n."""
    store = RunStore(redis)
    created = {}
    for i in range(count):
        run_id = shards.new_run_id(shard=i % len(shards.shards()))
        event = stepq.Event(name="test/cluster.mixed", data={"n": i, "log": str(log), **data})
        reply = await store.create_run(
            run_id=run_id, fn_slug=mixed.slug, app_id="t-cluster", events=[event], dedupe_key=None
        )
        assert int(reply[0]) == 1, reply
        created[run_id] = i
    return created


async def wait_for_ends(redis: Any, run_ids: list[str], timeout: float = 90.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        found = await run_statuses(redis, run_ids)
        if all(status in TERMINAL for status in found.values()):
            return found
        if time.monotonic() > deadline:
            behind = {r: s for r, s in found.items() if s not in TERMINAL}
            raise AssertionError(f"{len(behind)} of {len(run_ids)} runs did not end: {list(behind.items())[:5]}")
        await asyncio.sleep(0.1)


async def check_outcomes(redis: Any, created: dict[str, int], log: Path) -> None:
    """Every run completed with the right output; every step ran at least once (the flaky one twice)."""
    statuses = await wait_for_ends(redis, list(created))
    assert set(statuses.values()) == {"completed"}, collections.Counter(statuses.values())
    for run_id, n in created.items():
        view = await get_run(redis, run_id)
        assert view is not None and view.output == expected(n), (run_id, view)
    runs = collections.Counter(tuple(line.split()) for line in log.read_text().splitlines())
    for run_id in created:
        assert runs[(run_id, "a")] >= 1 and runs[(run_id, "flaky")] >= 2, run_id
        assert all(runs[(run_id, f"p{i}")] >= 1 for i in range(BRANCHES)), run_id


def masters_holding(cluster: LocalCluster, run_ids: list[str]) -> set[int]:
    return {cluster.node_of_slot(key_slot(keys.run(run_id).encode())).port for run_id in run_ids}


async def test_open_redis_finds_a_cluster_and_uses_every_shard(cluster: LocalCluster) -> None:
    client = await open_redis(cluster.url)
    try:
        assert isinstance(client, RedisCluster)
        assert shards.shards() == range(shards.SHARD_LIMIT)
        # a script, routed by its keys, on every master (NOSCRIPT there: redis-py loads it everywhere)
        store = RunStore(client)
        created = await create_runs(client, shards.SHARD_LIMIT, Path("/dev/null"))
        assert masters_holding(cluster, list(created)) == {m.port for m in cluster.masters()}
        assert await store.redis.exists(*(keys.run(run_id) for run_id in created)) == len(created)
    finally:
        await close(client)


async def test_a_single_redis_takes_its_shard_count_from_the_registry_key(redis: Redis) -> None:
    await use_shards(redis, 4)
    shards.configure(1)
    client = await open_redis(REDIS_URL)
    try:
        assert isinstance(client, Redis) and shards.shards() == range(4)
    finally:
        await close(client)
    await redis.set(keys.SHARD_COUNT, 33)
    with pytest.raises(ValueError, match=r"stepq:\{registry\}:shards holds '33'"):
        await open_redis(REDIS_URL)
    await redis.delete(keys.SHARD_COUNT)
    client = await open_redis(REDIS_URL)
    await close(client)
    assert shards.shards() == range(1)


async def test_runs_on_every_master_end_under_two_workers_one_of_them_killed(
    cluster_redis: RedisCluster, cluster: LocalCluster, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    workers = start_workers(tmp_path, cluster.url, 2)
    try:
        created = await create_runs(cluster_redis, 64, log, work_s=0.3)
        assert masters_holding(cluster, list(created)) == {m.port for m in cluster.masters()}
        # some runs mid-step, some asleep: kill one worker outright
        deadline = time.monotonic() + 30
        while not log.exists() or len(log.read_text().splitlines()) < 20:
            assert time.monotonic() < deadline, "no steps ran"
            await asyncio.sleep(0.05)
        workers[0].proc.kill()
        workers[0].proc.wait(timeout=10)
        await check_outcomes(cluster_redis, created, log)
        survivor = workers[1].logs()
        assert not [e for e in survivor if e.get("level") in ("error", "critical")], survivor[-20:]
        assert workers[1].alive()
    finally:
        for worker in workers:
            worker.stop()


async def test_a_master_killed_mid_run_fails_over_to_its_replica_and_every_run_ends(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        redis = await open_redis(cluster.url)
        workers = start_workers(tmp_path, cluster.url, 2)
        try:
            log = tmp_path / "steps.log"
            created = await create_runs(redis, 64, log, work_s=0.2, nap="2s")
            deadline = time.monotonic() + 30
            while not log.exists() or len(log.read_text().splitlines()) < 20:
                assert time.monotonic() < deadline, "no steps ran"
                await asyncio.sleep(0.05)
            victim = cluster.masters()[1]
            [replica] = cluster.replicas_of(victim)
            cluster.kill(victim)
            cluster.wait_ok(timeout=30)  # the replica took over its slots
            assert replica in cluster.masters()
            await check_outcomes(redis, created, log)
            for worker in workers:
                assert worker.alive(), worker.stderr()[-4000:]
            kinds = {e.get("kind") for w in workers for e in w.logs() if e.get("event") == "redis.unavailable"}
            print("worker saw", kinds)
        finally:
            for worker in workers:
                worker.stop()
            await close(redis)
            shards.configure(1)
