"""Fixtures: a real Redis (the test database, flushed before each test) and real worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

import stepq
from stepq.runtime import keys, shards
from stepq.runtime.connection import close, connect, open_redis
from stepq.workers.embedded import EmbeddedRedis, free_port
from tests.cluster import LocalCluster
from tests.helpers import REDIS_URL, StartWorkers, WorkerProcess


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A connection to the test database, flushed before the test."""
    client = connect(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        await client.aclose()
        pytest.fail(f"no Redis answers at {REDIS_URL} (set STEPQ_TEST_REDIS_URL, or run scripts/test): {exc}")
    await client.flushdb()
    shards.configure(1)  # as a process opening the emptied database would (tests.helpers.use_shards)
    yield client
    # back to one shard: a module's long-lived process (stepq api) may open the database before the
    # next test's flush, and must not take a shard count a test set (tests.helpers.use_shards)
    await client.delete(keys.SHARD_COUNT)
    await client.aclose()


@pytest.fixture
async def db() -> AsyncIterator[Redis]:
    """A connection to the test database, not flushed: for the tests of a shared served stack, whose
    registrations must survive from one test to the next."""
    client = connect(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def sender(redis: Redis) -> AsyncIterator[stepq.Client]:
    """A client that sends events to the test database (sending does not depend on the app)."""
    client = stepq.Client("test-sender", redis_url=REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def start_workers(redis: Redis, tmp_path: Path) -> Iterator[StartWorkers]:
    """``start_workers("loops", n=2, env={...})``: start n workers serving ``tests.apps.<module>:client``.

    Each is ready (its app registered) when this returns; all are stopped at teardown.
    """
    started: list[WorkerProcess] = []

    def start(app: str, n: int = 1, env: dict[str, str] | None = None) -> list[WorkerProcess]:
        full_env = {
            **os.environ,
            "STEPQ_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            "STEPQ_REDIS_URL": REDIS_URL,
            **(env or {}),
        }
        batch = [WorkerProcess(app, len(started) + i, tmp_path, full_env) for i in range(n)]
        started.extend(batch)
        for worker in batch:
            worker.wait_ready()
        return batch

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own (no persistence), for tests that reconfigure, restart or
    count what reaches it."""
    server = EmbeddedRedis(port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of 3 masters with a replica each (tests/cluster.py), for the whole session."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session's cluster, whole and emptied for this test; this process is put back to one
    shard after it (opening a cluster configures all 32)."""
    local_cluster.wait_ok()
    local_cluster.flush()
    yield local_cluster
    shards.configure(1)


@pytest.fixture
async def cluster_redis(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A cluster client (``open_redis``) on the emptied session cluster."""
    client = await open_redis(cluster.url)
    assert isinstance(client, RedisCluster)
    yield client
    await close(client)
