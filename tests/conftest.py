"""Fixtures: a real Redis (the test database, flushed before each test) and real worker processes.

Test files marked ``pytestmark = pytest.mark.both_deployments`` run every test that uses the test
Redis twice: on the single Redis (``[redis]``) and on the session's local Redis Cluster of 3
masters with a replica each (``[cluster]``). ``STEPQ_TEST_DEPLOYMENTS=redis`` or ``=cluster`` keeps
one of the two (``both`` by default).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

import stepq
from stepq.runtime import keys, shards
from stepq.runtime.connection import RedisClient, close, connect, open_redis
from stepq.workers.embedded import EmbeddedRedis, free_port
from tests import helpers
from tests.cluster import LocalCluster
from tests.helpers import Deployment, StartWorkers, WorkerProcess

#: The deployments a ``both_deployments`` file runs on (``STEPQ_TEST_DEPLOYMENTS``: both, redis, cluster).
DEPLOYMENTS = {"both": ("redis", "cluster"), "redis": ("redis",), "cluster": ("cluster",)}[
    os.environ.get("STEPQ_TEST_DEPLOYMENTS") or "both"
]
#: Parameters that emulate several shards on one Redis (``use_shards``): on the cluster (32 shards
#: of its own) only their 1-shard case runs, the others would run the same test again.
SHARD_EMULATION_PARAMS = ("shard_count", "count")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_deployments: run the file's tests on the single Redis and on a local Redis Cluster"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_deployments") and "deployment" in metafunc.fixturenames:
        # module scope: the file's tests run on one deployment, then on the other, so that its
        # module-scoped fixtures (a `stepq api` process) start once per deployment
        metafunc.parametrize("deployment", DEPLOYMENTS, indirect=True, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params is not None else {}
        emulated = any(isinstance(params.get(name), int) and params[name] > 1 for name in SHARD_EMULATION_PARAMS)
        (drop if params.get("deployment") == "cluster" and emulated else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """The single Redis, unless the file is marked ``both_deployments`` and this is its cluster pass:
    then ``tests.helpers.REDIS_URL`` (what workers, senders and `stepq api` processes are given) and
    the test module's own ``REDIS_URL`` name the cluster for the module's tests. A module-scoped
    fixture that starts a process on ``REDIS_URL`` must depend on this one (so it starts once per
    deployment)."""
    name = getattr(request, "param", "redis")
    if name == "redis":
        yield Deployment("redis", helpers.SINGLE_REDIS_URL)
        return
    cluster: LocalCluster = request.getfixturevalue("local_cluster")
    cluster.wait_ok()
    url = cluster.url
    with pytest.MonkeyPatch.context() as patch:
        for module in (helpers, request.module):
            if hasattr(module, "REDIS_URL"):
                patch.setattr(module, "REDIS_URL", url)
        yield Deployment("cluster", url, cluster)


@pytest.fixture
async def redis(deployment: Deployment) -> AsyncIterator[RedisClient]:
    """A connection to the test database, flushed before the test (on the cluster: every master
    flushed, and a cluster client, which also sets this process's 32 shards)."""
    if deployment.cluster is not None:
        deployment.cluster.wait_ok()
        deployment.cluster.flush()
        cluster_client = await open_redis(deployment.url)
        yield cluster_client
        await close(cluster_client)
        shards.configure(1)
        return
    client = connect(deployment.url)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        await client.aclose()
        pytest.fail(f"no Redis answers at {deployment.url} (set STEPQ_TEST_REDIS_URL, or run scripts/test): {exc}")
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
    client = connect(helpers.REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def sender(redis: RedisClient) -> AsyncIterator[stepq.Client]:
    """A client that sends events to the test database (sending does not depend on the app)."""
    client = stepq.Client("test-sender", redis_url=helpers.REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def start_workers(redis: RedisClient, tmp_path: Path) -> Iterator[StartWorkers]:
    """``start_workers("loops", n=2, env={...})``: start n workers serving ``tests.apps.<module>:client``.

    Each is ready (its app registered) when this returns; all are stopped at teardown.
    """
    started: list[WorkerProcess] = []

    def start(app: str, n: int = 1, env: dict[str, str] | None = None) -> list[WorkerProcess]:
        full_env = {
            **os.environ,
            "STEPQ_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            "STEPQ_REDIS_URL": helpers.REDIS_URL,
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


@pytest.fixture(params=[1, 4], ids=["1-shard", "4-shards"])
async def shard_count(request: pytest.FixtureRequest, redis: RedisClient) -> int:
    """The test database's shard count, 1 or 4, set before any worker or sender opens it: a module
    runs every test on both with ``pytestmark = pytest.mark.usefixtures("shard_count")`` (on the
    cluster, which has 32 shards of its own, only the 1-shard case runs: SHARD_EMULATION_PARAMS)."""
    count: int = request.param
    if count > 1:
        await helpers.use_shards(redis, count)
    return count
