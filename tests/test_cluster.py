"""stepq on a Redis Cluster (tests/cluster.py: 3 masters, a replica each), served by real workers.

Runs are created in every one of the 32 shards (so on every master); their steps, sleep, retried
step and parallel steps all happen within the run's shard. Two worker processes serve every shard;
one is SIGKILLed mid-run, and in another test a master is SIGKILLed and its replica promoted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

import stepq
from stepq.runtime import keys, run_index, scripts, shards
from stepq.runtime.connection import close, open_redis
from stepq.runtime.queries import find_runs, get_run
from stepq.runtime.redis_errors import error_kind, is_passing, unavailable_reason
from stepq.runtime.registry import Registry
from stepq.runtime.run_filter import RunFilter
from stepq.runtime.store import RunStore
from tests.apps.cluster_app import BRANCHES, expected, mixed, sender
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


async def create_runs(redis: Any, count: int, log: Path, shard: int | None = None, **data: Any) -> dict[str, int]:
    """``count`` runs of ``mixed``, in ``shard`` or spread over every shard in turn; run id -> its n."""
    store = RunStore(redis)
    created = {}
    for i in range(count):
        run_id = shards.new_run_id(shard=i % len(shards.shards()) if shard is None else shard)
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


def lines_of(workers: list[WorkerOn]) -> str:
    """The workers' log lines other than invocations (what went wrong, for a failure's message)."""
    return "\n".join(
        f"{w.name}: {line}" for w in workers for line in w.stderr().splitlines() if '"invocation"' not in line
    )[-6000:]


async def steps_ran(log: Path, count: int) -> None:
    """Wait until ``count`` step executions were logged (runs are under way)."""
    deadline = time.monotonic() + 30
    while not log.exists() or len(log.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, "no steps ran"
        await asyncio.sleep(0.05)


async def ended_well(redis: Any, created: dict[str, int], log: Path, workers: list[WorkerOn]) -> None:
    """``check_outcomes``, with the workers' own lines in the failure; and the workers still run."""
    try:
        await check_outcomes(redis, created, log)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lines_of(workers)}") from None
    for worker in workers:
        assert worker.alive(), worker.stderr()[-4000:]


def masters_holding(cluster: LocalCluster, run_ids: list[str]) -> set[int]:
    return {cluster.node_of_slot(key_slot(keys.run(run_id).encode())).port for run_id in run_ids}


def error(kind: Any, message: str) -> BaseException:
    """An error as redis-py raises it (its cluster errors' constructors are untyped)."""
    made: BaseException = kind(message)
    return made


def test_a_cluster_changing_is_passing_trouble_and_a_cross_slot_command_is_not() -> None:
    """What workers ride out (as a lost connection) and what the API answers 503 for."""
    assert error_kind(error(ClusterDownError, "The cluster is down")) == "CLUSTERDOWN"
    assert error_kind(error(MasterDownError, "Link with MASTER is down")) == "MASTERDOWN"
    assert error_kind(error(TryAgainError, "Multiple keys request during rehashing of slot")) == "TRYAGAIN"
    assert error_kind(error(MovedError, "3999 127.0.0.1:6381")) == "MOVED/ASK"
    for kind, message in (
        (ClusterDownError, "The cluster is down"),
        (TryAgainError, "Multiple keys request during rehashing of slot"),
        (MovedError, "3999 127.0.0.1:6381"),
        (SlotNotCoveredError, "Slot 3999 is not covered by the cluster."),
        (ClusterError, "TTL exhausted."),
    ):
        assert is_passing(error(kind, message)), kind
    unreachable = error(RedisClusterException, "Redis Cluster cannot be connected. Please provide a reachable node")
    assert unavailable_reason(unreachable) == "did not answer"
    assert not is_passing(error(RedisClusterException, "EVALSHA - all keys must map to the same key slot"))


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


async def test_scripts_in_a_cluster_pipeline_run_on_masters_that_lack_them(
    cluster_redis: RedisCluster, cluster: LocalCluster
) -> None:
    """Redis does not replicate its script cache, and redis-py neither takes EVALSHA in a cluster
    pipeline nor loads its scripts: ``scripts.pipelined`` queues the call, ``scripts.execute``
    loads what a master lacks and sends those calls again."""
    echo = scripts.register(cluster_redis, "return KEYS[1]")
    names = [keys.runs_active(shard) for shard in shards.shards()]  # on every master
    await cluster_redis.script_flush()
    async with cluster_redis.pipeline(transaction=False) as pipe:
        for name in names:
            await scripts.pipelined(echo, pipe, [name], [])
        plain = await pipe.execute(raise_on_error=False)
    assert all(isinstance(reply, NoScriptError) for reply in plain), plain  # the trap
    await cluster_redis.script_flush()
    async with cluster_redis.pipeline(transaction=False) as pipe:
        for name in names:
            await scripts.pipelined(echo, pipe, [name], [])
        replies = await scripts.execute(pipe)
    assert replies == [name.encode() for name in names]


async def test_runs_of_an_unregistered_function_are_found_in_every_shard(cluster_redis: RedisCluster) -> None:
    """A function no longer registered keeps its runs: ``run_index.function_slugs`` looks for them in
    every shard's indexes (one command per shard: keys of two slots in one command are refused)."""
    created = await create_runs(cluster_redis, 2 * shards.SHARD_LIMIT, Path("/dev/null"))
    assert not await Registry(cluster_redis).functions()  # nothing registered: the indexes decide
    assert await run_index.function_slugs(cluster_redis, mixed.slug) == [mixed.slug]
    assert await run_index.function_slugs(cluster_redis, "t-cluster-gone") == []
    found: set[str] = set()
    cursor: str | None = None
    while True:
        page = await find_runs(cluster_redis, RunFilter(function=mixed.slug), limit=25, cursor=cursor)
        found |= {view.run_id for view in page.runs}
        if page.cursor is None:
            break
        cursor = page.cursor
    assert found == set(created)
    assert (await find_runs(cluster_redis, RunFilter(function="t-cluster-gone"))).runs == []


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
        await steps_ran(log, 20)
        workers[0].proc.kill()
        workers[0].proc.wait(timeout=10)
        await ended_well(cluster_redis, created, log, workers[1:])
        survivor = workers[1].logs()
        assert not [e for e in survivor if e.get("level") in ("error", "critical")], survivor[-20:]
    finally:
        for worker in workers:
            worker.stop()


async def test_a_shard_moved_to_another_master_mid_run_loses_no_run(
    cluster_redis: RedisCluster, cluster: LocalCluster, tmp_path: Path
) -> None:
    """Adding capacity is moving slots: a shard's slot (its runs, jobs, queue) migrates to another
    master while its runs are in flight; clients meet ASK and TRYAGAIN meanwhile, and every run ends."""
    shard = 7
    slot = key_slot(shards.SHARD_TAGS[shard].encode())
    log = tmp_path / "steps.log"
    workers = start_workers(tmp_path, cluster.url, 2)
    try:
        created = await create_runs(cluster_redis, 40, log, shard=shard, work_s=0.1)
        await steps_ran(log, 20)
        source = cluster.node_of_slot(slot)
        target = next(m for m in cluster.masters() if m is not source)
        await asyncio.to_thread(cluster.move_slot, slot, target)
        assert cluster.node_of_slot(slot) is target
        await ended_well(cluster_redis, created, log, workers)
    finally:
        for worker in workers:
            worker.stop()


@dataclasses.dataclass
class MidRun:
    """A local cluster (3 masters, a replica each), two workers, and 64 runs over every shard that
    have taken their first steps."""

    cluster: LocalCluster
    redis: Any
    workers: list[WorkerOn]
    log: Path
    created: dict[str, int]


@contextlib.asynccontextmanager
async def runs_mid_flight(tmp_path: Path) -> AsyncIterator[MidRun]:
    with LocalCluster(tmp_path / "cluster") as cluster:
        redis = await open_redis(cluster.url)
        workers = start_workers(tmp_path, cluster.url, 2)
        try:
            log = tmp_path / "steps.log"
            created = await create_runs(redis, 64, log, work_s=0.2, nap="2s")
            await steps_ran(log, 20)
            yield MidRun(cluster, redis, workers, log, created)
        finally:
            for worker in workers:
                worker.stop()
            await close(redis)
            shards.configure(1)


async def test_a_master_killed_mid_run_fails_over_to_its_replica_and_every_run_ends(tmp_path: Path) -> None:
    async with runs_mid_flight(tmp_path) as run:
        cluster, workers = run.cluster, run.workers
        victim = cluster.masters()[1]
        [replica] = cluster.replicas_of(victim)
        cluster.kill(victim)
        cluster.wait_ok(timeout=30)  # the replica took over its slots
        assert replica in cluster.masters()
        await ended_well(run.redis, run.created, run.log, workers)
        kinds = {e.get("kind") for w in workers for e in w.logs() if e.get("event") == "redis.unavailable"}
        print("worker saw", kinds)


async def test_a_master_frozen_mid_run_fails_over_and_no_worker_waits_on_it_for_ever(tmp_path: Path) -> None:
    """SIGSTOP, not SIGKILL: the frozen master's kernel still accepts the workers' connections and
    bytes and acknowledges them, so neither a refused connection nor TCP's own limits end the reads
    waiting on it (a hot-path connection has no read timeout). The workers' watchdogs must notice
    the master that does not answer and drop their connections to it; its replica takes over."""
    async with runs_mid_flight(tmp_path) as run:
        cluster, workers = run.cluster, run.workers
        # not the master the URL names, nor the registry's, which the watchdog's own probe reads
        # (it would find that one silent, and drop every connection)
        registry = cluster.node_of_slot(key_slot(keys.WAITED_EVENTS.encode()))
        victim = next(m for m in cluster.masters() if m.url != cluster.url and m is not registry)
        [replica] = cluster.replicas_of(victim)
        cluster.freeze(victim)
        deadline = time.monotonic() + 30
        while replica not in cluster.masters():  # the replica takes over its slots
            assert time.monotonic() < deadline, "the frozen master's replica was not promoted"
            await asyncio.sleep(0.2)
        cluster.wait_ok(timeout=30)
        await ended_well(run.redis, run.created, run.log, workers)
        # Every run ended (a job stuck on the frozen master lost its lease and ran again
        # elsewhere), but the task that ran it must not wait on the frozen master for ever,
        # holding one of its worker's slots.
        await asyncio.sleep(2 * WATCHDOG_TIMEOUT_S)
        for worker in workers:
            stuck = [name for name in await running_tasks(worker) if name.startswith("stepq-job:")]
            assert stuck == [], f"{worker.name} still runs {stuck}\n{lines_of(workers)}"
        unresponsive = [e for w in workers for e in w.logs() if e.get("event") == "redis.node_unresponsive"]
        print("worker saw", unresponsive[:3])


#: The workers' watchdog timeout (``STEPQ_REDIS_CHECK_TIMEOUT``'s default).
WATCHDOG_TIMEOUT_S = 1.5


async def running_tasks(worker: WorkerOn) -> list[str]:
    """The names of the worker's asyncio tasks (its SIGUSR1 dump, ``worker.tasks``)."""
    before = len([e for e in worker.logs() if e.get("event") == "worker.tasks"])
    worker.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while len(dumps := [e for e in worker.logs() if e.get("event") == "worker.tasks"]) == before:
        assert time.monotonic() < deadline, worker.stderr()[-2000:]
        await asyncio.sleep(0.05)
    return list(dumps[-1]["tasks"])


async def test_steps_send_events_after_the_master_the_worker_url_names_failed_over(tmp_path: Path) -> None:
    """A worker's steps send with the app's client (``client.send``); the master its URL names dies
    before the first send. The sends go through the worker's client, which follows the cluster: a
    client opened from the URL's node would fail every send (that node is gone), failing the runs."""
    with LocalCluster(tmp_path / "cluster") as cluster:
        url = cluster.url
        [victim] = [node for node in cluster.nodes if node.url == url]
        assert victim in cluster.masters() and cluster.replicas_of(victim)
        workers = start_workers(tmp_path, url, 1)
        cluster.kill(victim)
        cluster.wait_ok(timeout=30)
        redis = await open_redis(cluster.url)  # another node's URL now
        try:
            store = RunStore(redis)
            created = []
            for i in range(12):
                run_id = shards.new_run_id(shard=i % len(shards.shards()))
                event = stepq.Event(name="test/cluster.sender", data={"i": i})
                reply = await store.create_run(
                    run_id=run_id, fn_slug=sender.slug, app_id="t-cluster", events=[event], dedupe_key=None
                )
                assert int(reply[0]) == 1, reply
                created.append(run_id)
            try:
                statuses = await wait_for_ends(redis, created)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{lines_of(workers)}") from None
            assert set(statuses.values()) == {"completed"}, f"{statuses}\n{lines_of(workers)}"
            for run_id in created:
                view = await get_run(redis, run_id)
                assert view is not None and isinstance(view.output, list) and len(view.output) == 1, view
        finally:
            for worker in workers:
                worker.stop()
            await close(redis)
            shards.configure(1)


async def test_one_redis_holding_four_shards_is_served_whole_by_one_worker(redis: Redis, tmp_path: Path) -> None:
    """The testing aid (``stepq:{registry}:shards``): the sharded paths on one Redis, one worker
    serving every shard (its claims, idle checks, mover timers and sleeps per shard)."""
    await use_shards(redis, 4)
    log = tmp_path / "steps.log"
    created = await create_runs(redis, 16, log)
    assert {shards.shard_of(run_id) for run_id in created} == {0, 1, 2, 3}
    [worker] = start_workers(tmp_path, REDIS_URL, 1)
    try:
        await check_outcomes(redis, created, log)
        assert worker.alive()
    finally:
        worker.stop()
