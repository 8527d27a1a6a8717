"""``READONLY`` and ``LOADING``, the answers of a Redis in the middle of a failover or a restart, made
real and ridden out: the workers live through them and every run ends right; the API answers 503 with
``Retry-After`` (not 500) while they last; the sender gets a ``SendError`` it may retry.

- READONLY: the Redis the workers use turns into a replica (``REPLICAOF`` a master that does not
  answer: it keeps its data and refuses writes), as an old master does when a failover demoted it,
  then becomes a master again. A connection that met READONLY drops itself (so that a DNS name or a
  proxy that moved to the new master would be followed on reconnecting).
- LOADING: the Redis restarts on a dataset big enough that it answers ``LOADING`` for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, RedisError

import stepq
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.connection import connect
from stepq.runtime.redis_errors import ReplicaNowError, error_kind, is_passing, unavailable_reason
from stepq.workers.embedded import free_port
from tests.managed_workload import ManagedWorker, Workload
from tests.redis_servers import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path, "redis", ["appendonly yes", "enable-debug-command local"])
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@dataclass
class Stack:
    """Two workers, the API and a sender on one Redis, with a workload in flight."""

    workers: list[ManagedWorker]
    api: ApiServer
    sender: stepq.Client
    workload: Workload


@contextlib.asynccontextmanager
async def stack_on(server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    url = f"redis://127.0.0.1:{server.port}/0"
    reader = connect(url)
    sender = stepq.Client("t-managed-sender", redis_url=url)
    api = ApiServer(url, settings=ApiSettings.from_env(dev=True)).start()
    workers = [ManagedWorker(i, tmp_path, {"STEPQ_REDIS_URL": url}) for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        workload = Workload(sender, reader, chains=40, waits=10, pause_s=0.1)
        await workload.start()
        await asyncio.sleep(0.5)  # runs in flight
        yield Stack(workers, api, sender, workload)
    finally:
        api.stop()
        await sender.aclose()
        await reader.aclose()
        for worker in workers:
            worker.stop()


async def post_event(api: ApiServer) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{api.url}/e/any-key", json={"name": "test/managed.chain", "data": {"n": 1000}})


async def test_workers_ride_out_readonly_and_the_api_answers_503(server: RedisServer, tmp_path: Path) -> None:
    admin = Redis(port=server.port)
    try:
        async with stack_on(server, tmp_path) as stack:
            connections_before = await _connections_made(admin)
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # type: ignore[no-untyped-call]
            demoted = time.monotonic()
            response = await post_event(stack.api)
            assert response.status_code == 503, response.text
            assert "read-only replica" in response.json()["error"], response.text
            assert response.headers.get("Retry-After"), response.headers
            with pytest.raises(stepq.StepqError, match="read-only replica"):
                await stack.sender.send(stepq.Event(name="test/managed.chain", data={"n": 1001}))
            # Until the workers met it, and then a while longer.
            deadline = time.monotonic() + 20
            while not all(_met(w, "READONLY") for w in stack.workers):
                assert time.monotonic() < deadline, [w.stderr()[-2000:] for w in stack.workers]
                await asyncio.sleep(0.1)
            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - demoted)))
            reconnects = await _connections_made(admin) - connections_before
            await admin.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
            took = await stack.workload.finish(timeout=60)
            await stack.workload.check()
            assert (await post_event(stack.api)).status_code == 200
            for worker in stack.workers:
                assert worker.alive(), worker.stderr()[-3000:]
                assert worker.logged("redis.recovered"), worker.stderr()[-3000:]
            print(f"\nREADONLY for 3 s, {reconnects} connections made meanwhile; runs ended {took:.1f} s after")
    finally:
        await admin.aclose()


async def test_workers_ride_out_a_restart_that_answers_loading(server: RedisServer, tmp_path: Path) -> None:
    admin = Redis(port=server.port)
    # Enough data that loading it takes a while (~1 s here) after the restart.
    await admin.execute_command("DEBUG", "POPULATE", 2_000_000, "filler", 64)  # type: ignore[no-untyped-call]
    await admin.execute_command("BGREWRITEAOF")  # type: ignore[no-untyped-call]
    while int((await admin.info("persistence"))["aof_rewrite_in_progress"]):
        await asyncio.sleep(0.1)
    await admin.aclose()
    async with stack_on(server, tmp_path) as stack:
        server.stop()
        server.start()
        # A client without retries sees LOADING; so does the API, which answers 503.
        probe = Redis(port=server.port, retry_on_error=[], socket_timeout=5)
        loading_seen = False
        api_answers: list[int] = []
        try:
            while True:
                try:
                    await probe.ping()
                    break
                except BusyLoadingError:
                    loading_seen = True
                    if not api_answers:
                        response = await post_event(stack.api)
                        api_answers.append(response.status_code)
                        if response.status_code == 503:
                            assert "loading" in response.json()["error"], response.text
                except RedisError:
                    pass
                await asyncio.sleep(0.02)
        finally:
            await probe.aclose()
        assert loading_seen, "Redis never answered LOADING: make the dataset bigger"
        took = await stack.workload.finish(timeout=60)
        await stack.workload.check()
        # 503 while loading, or 200 if it was over by the time the API asked again (its own retries)
        assert api_answers and api_answers[0] in (200, 503), api_answers
        for worker in stack.workers:
            assert worker.alive(), worker.stderr()[-3000:]
        print(f"\nAPI answered {api_answers} during LOADING; runs ended {took:.1f} s after Redis served again")


async def test_a_connection_that_meets_readonly_drops_itself_and_reconnects(server: RedisServer) -> None:
    client = connect(f"redis://127.0.0.1:{server.port}/0", max_connections=1)
    admin = Redis(port=server.port)
    try:
        before = await client.client_id()
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # type: ignore[no-untyped-call]
        with pytest.raises(ReplicaNowError, match="read-only replica") as failure:
            await client.set("stepq-test:key", "1")
        assert error_kind(failure.value) == "READONLY" and is_passing(failure.value)
        assert unavailable_reason(failure.value) == "is a read-only replica"
        await admin.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
        assert await client.set("stepq-test:key", "1")
        # Not the connection that met READONLY: that one closed itself, this one is new.
        assert await client.client_id() != before
    finally:
        await client.aclose()
        await admin.aclose()


async def _connections_made(admin: Redis) -> int:
    return int((await admin.info("stats"))["total_connections_received"])


def _met(worker: ManagedWorker, kind: str) -> bool:
    return any(e.get("kind") == kind for e in worker.logs() if str(e.get("event", "")).startswith("redis."))
