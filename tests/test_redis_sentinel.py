"""A Sentinel-managed failover under load: master, replica and three sentinels of the test's own; two
workers and the sender reach Redis through a ``redis+sentinel://`` URL; the master is killed while
runs are in flight, the sentinels promote the replica, and every run ends with the right output.

What async replication can lose: the writes the master acknowledged in its last moments that had not
reached the replica. The test makes the runs' creation durable first (``WAIT 1``: a run created in
that window could be lost with it); the steps' results written after that may be lost, and then
those steps run again (at least once, as after any crash), but no run is lost or ends wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

import stepq
from stepq.redis_config import RedisConfigError
from stepq.runtime.connection import connect
from stepq.runtime.redis_urls import parse_redis_url
from stepq.workers.embedded import free_port
from tests.helpers import run_statuses
from tests.managed_workload import ManagedWorker, Workload
from tests.redis_servers import RedisServer, TlsFiles, make_tls_files, redis_server_binary, require_tls, tls_settings

SERVICE = "stepq-main"


class SentinelSet:
    """A master, its replica and three sentinels watching them (quorum 2, down after 1 s); with
    ``tls``, every one of them speaks TLS only and wants client certificates, among themselves too."""

    def __init__(self, directory: Path, tls: TlsFiles | None = None) -> None:
        self.tls = tls
        master_port = free_port()
        self.master = RedisServer(directory, "master", self._tls(master_port), port=master_port)
        replica_port = free_port()
        self.replica = RedisServer(
            directory,
            "replica",
            [f"replicaof 127.0.0.1 {self.master.port}", *self._tls(replica_port)],
            port=replica_port,
        )
        self.sentinels = []
        for i in range(3):
            port = free_port()
            settings = [
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 10000",
                f"sentinel parallel-syncs {SERVICE} 1",
                *self._tls(port),
            ]
            self.sentinels.append(RedisServer(directory, f"sentinel-{i}", settings, port=port, sentinel=True))

    def _tls(self, port: int) -> list[str]:
        return [*tls_settings(self.tls, port), "tls-replication yes"] if self.tls else []

    def client(self, port: int) -> Redis:
        """A client of one of the servers (no Sentinel in between)."""
        if self.tls is None:
            return Redis(port=port)
        files = self.tls
        return Redis(
            port=port,
            ssl=True,
            ssl_ca_certs=str(files.ca),
            ssl_certfile=str(files.client_cert),
            ssl_keyfile=str(files.client_key),
        )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls is None:
            return f"redis+sentinel://{hosts}/{SERVICE}/0"
        files = self.tls
        query = f"ssl_ca_certs={files.ca}&ssl_certfile={files.client_cert}&ssl_keyfile={files.client_key}"
        return f"rediss+sentinel://{hosts}/{SERVICE}/0?{query}"

    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica, *self.sentinels]

    async def wait_ready(self) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the other sentinels."""
        deadline = time.monotonic() + 30
        while True:
            ready = True
            replica = self.client(self.replica.port)
            try:
                info = await replica.info("replication")
                ready &= info.get("master_link_status") == "up"
            finally:
                await replica.aclose()
            for sentinel in self.sentinels:
                client = self.client(sentinel.port)
                try:
                    masters = await client.sentinel_masters()  # type: ignore[no-untyped-call]
                    state = masters.get(SERVICE, {})
                    ready &= state.get("num-slaves", 0) >= 1 and state.get("num-other-sentinels", 0) >= 2
                finally:
                    await client.aclose()
            if ready:
                return
            assert time.monotonic() < deadline, "the sentinels did not see the replica and each other within 30 s"
            await asyncio.sleep(0.2)

    async def master_port(self) -> int:
        client = self.client(self.sentinels[0].port)
        try:
            _host, port = await client.sentinel_get_master_addr_by_name(SERVICE)  # type: ignore[no-untyped-call]
            return int(port)
        finally:
            await client.aclose()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    group = SentinelSet(tmp_path)
    try:
        for server in group.servers():
            server.start()
        yield group
    finally:
        for server in group.servers():
            server.stop()


async def test_runs_continue_after_sentinel_fails_the_master_over(sentinels: SentinelSet, tmp_path: Path) -> None:
    await sentinels.wait_ready()
    url = sentinels.url
    reader = connect(url)
    sender = stepq.Client("t-managed-sender", redis_url=url)
    workers = [ManagedWorker(i, tmp_path, {"STEPQ_REDIS_URL": url}, concurrency=30) for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        workload = Workload(sender, reader, chains=60, waits=10, pause_s=0.15, log=tmp_path / "steps.log")
        await workload.start()
        # The runs exist on the replica too before the master goes: WAIT is acknowledged once every
        # write this connection made, and so every write before it, reached a replica.
        # (one pipeline: one connection for both)
        async with reader.pipeline(transaction=False) as pipe:
            pipe.set("stepq-test:marker", "1")
            pipe.execute_command("WAIT", 1, 5000)
            _, replicas = await pipe.execute()
        assert replicas >= 1
        # Runs in flight when the master goes: some done, most between or inside steps.
        deadline = time.monotonic() + 30
        while (before := sum(s == "completed" for s in (await _statuses(reader, workload)).values())) < 10:
            assert time.monotonic() < deadline, "10 runs did not complete within 30 s"
            await asyncio.sleep(0.05)
        killed = time.monotonic()
        sentinels.master.kill()

        new_port = 0

        async def watch() -> None:
            nonlocal new_port
            if not new_port:
                port = await sentinels.master_port()
                new_port = port if port == sentinels.replica.port else 0

        took = await workload.finish(timeout=120, during=watch)
        await workload.check()
        assert new_port == sentinels.replica.port, "the sentinels never promoted the replica"
        invocations = [len(w.logged("invocation")) for w in workers]
        print(
            f"\nmaster killed with {before} of 70 runs completed; all ended {took:.1f} s later "
            f"({time.monotonic() - killed:.1f} s after the kill); invocations per worker {invocations}; "
            f"{workload.repeated_steps()} step executions repeated (of {3 * 60})"
        )
        for worker in workers:
            assert worker.alive(), worker.stderr()[-3000:]
        # Both workers went on after the failover (the new master is the old replica).
        info = await reader.info("server")
        assert int(info["tcp_port"]) == sentinels.replica.port
    finally:
        await sender.aclose()
        await reader.aclose()
        for worker in workers:
            worker.stop()


async def _statuses(reader: Redis, workload: Workload) -> dict[str, str]:
    return await run_statuses(reader, [*workload.chain_runs, *workload.wait_runs])


async def test_over_tls_a_client_follows_the_master_sentinel_names(tmp_path: Path) -> None:
    """``rediss+sentinel://``: TLS with client certificates to the sentinels and to the data nodes;
    after the master is killed, the same client writes to the promoted replica."""
    require_tls(redis_server_binary())
    group = SentinelSet(tmp_path, make_tls_files(tmp_path / "pki"))
    try:
        for server in group.servers():
            server.start()
        await group.wait_ready()
        client = connect(group.url)
        try:
            assert await client.set("stepq-test:before", "1")
            first = (await client.info("server"))["run_id"]
            group.master.kill()
            deadline = time.monotonic() + 60
            while True:
                try:
                    await client.set("stepq-test:after", "1")
                    break
                except RedisError:
                    assert time.monotonic() < deadline, "no write reached a new master within 60 s"
                    await asyncio.sleep(0.2)
            replica = group.client(group.replica.port)
            try:
                assert (await client.info("server"))["run_id"] == (await replica.info("server"))["run_id"] != first
                assert await replica.get("stepq-test:after") == b"1"
            finally:
                await replica.aclose()
        finally:
            await client.aclose()
    finally:
        for server in group.servers():
            server.stop()


def test_sentinel_urls_name_sentinels_and_a_service() -> None:
    target = parse_redis_url("redis+sentinel://worker:s3cret@10.0.0.1:26379,10.0.0.2/main/3", environ={})
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert target.service_name == "main"
    assert (target.connection["db"], target.connection["username"], target.connection["password"]) == (
        3,
        "worker",
        "s3cret",
    )
    with pytest.raises(RedisConfigError, match="/service_name"):
        parse_redis_url("redis+sentinel://10.0.0.1:26379", environ={})
    with pytest.raises(RedisConfigError, match="not a sentinel's host:port"):
        parse_redis_url("redis+sentinel://10.0.0.1:x/main", environ={})
