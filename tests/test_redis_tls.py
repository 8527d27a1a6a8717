"""stepq over TLS: a Redis that speaks only TLS and wants a client certificate, with a CA made here.

Two workers (one finds the URL and the password in secret files, the other in its arguments) and the
sender run a workload of steps, sleeps and waits over ``rediss://``; the workers' watchdogs probe
over TLS too (they never report Redis unreachable). Then what must fail does, with clear errors: no
client certificate, a CA that did not sign the server's, a plain ``redis://`` client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

import stepq
from stepq.redis_config import RedisConfigError
from stepq.runtime import shards
from stepq.runtime.connection import close, connect, open_redis
from stepq.workers.embedded import free_port
from tests.cluster import LocalCluster
from tests.managed_workload import ManagedWorker, Workload
from tests.redis_servers import RedisServer, TlsFiles, make_tls_files, redis_server_binary, require_tls, tls_settings

PASSWORD = "tls-test-password"


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[RedisServer, TlsFiles]]:
    require_tls(redis_server_binary())
    files = make_tls_files(tmp_path / "pki")
    port = free_port()
    server = RedisServer(tmp_path, "redis-tls", [*tls_settings(files, port), f"requirepass {PASSWORD}"], port=port)
    server.start()
    try:
        yield server, files
    finally:
        server.stop()


def url_of(
    server: RedisServer, files: TlsFiles, *, password: bool = True, host: str = "localhost", **extra: str
) -> str:
    params = {
        "ssl_ca_certs": str(files.ca),
        "ssl_certfile": str(files.client_cert),
        "ssl_keyfile": str(files.client_key),
    }
    params.update(extra)
    query = "&".join(f"{k}={v}" for k, v in params.items() if v)
    auth = f":{PASSWORD}@" if password else ""
    return f"rediss://{auth}{host}:{server.port}/0?{query}"


async def test_a_workload_runs_over_tls_with_client_certificates_and_secret_files(
    tls: tuple[RedisServer, TlsFiles], tmp_path: Path
) -> None:
    server, files = tls
    url = url_of(server, files)
    (tmp_path / "url").write_text(url_of(server, files, password=False) + "\n")
    (tmp_path / "password").write_text(PASSWORD + "\n")
    from_files = {
        "STEPQ_REDIS_URL_FILE": str(tmp_path / "url"),
        "STEPQ_REDIS_PASSWORD_FILE": str(tmp_path / "password"),
    }
    reader = connect(url)
    sender = stepq.Client("t-managed-sender", redis_url=url)
    workers = [ManagedWorker(0, tmp_path, from_files), ManagedWorker(1, tmp_path, {}, url=url)]
    try:
        for worker in workers:
            worker.wait_ready()
        workload = Workload(sender, reader, chains=30, waits=10)
        await workload.start()
        took = await workload.finish(timeout=60)
        await workload.check()
        invocations = [len(w.logged("invocation")) for w in workers]
        print(f"\n40 runs over TLS in {took:.1f} s; invocations per worker {invocations}")
        assert all(count > 0 for count in invocations), invocations  # both workers reached Redis over TLS
        for worker in workers:
            assert worker.alive(), worker.stderr()[-2000:]
            assert worker.logged("redis.unreachable") == [], worker.stderr()[-2000:]  # the watchdog speaks TLS
        clients = await reader.client_list()
        assert len(clients) >= 3, clients  # the workers' connections and ours, all on the TLS port
    finally:
        await sender.aclose()
        await reader.aclose()
        for worker in workers:
            worker.stop()


async def test_a_workload_runs_on_a_redis_cluster_over_tls(tmp_path: Path) -> None:
    """A managed cluster with TLS (3 masters, a replica each): clients, the cluster bus and the
    replication all speak TLS, clients show a certificate. stepq finds the cluster from one node's
    ``rediss://`` URL and every node it discovers is reached over TLS with the URL's settings."""
    require_tls(redis_server_binary())
    files = make_tls_files(tmp_path / "pki")
    with LocalCluster(tmp_path / "cluster", tls=files) as cluster:
        url = cluster.tls_url()
        reader = await open_redis(url)
        assert isinstance(reader, RedisCluster) and len(reader.get_primaries()) == 3
        sender = stepq.Client("t-managed-sender", redis_url=url)
        worker = ManagedWorker(0, tmp_path, {}, url=url)
        try:
            worker.wait_ready()
            workload = Workload(sender, reader, chains=20, waits=6)
            await workload.start()
            took = await workload.finish(timeout=90)
            await workload.check()
            print(f"\n26 runs on a TLS cluster in {took:.1f} s")
            assert worker.alive(), worker.stderr()[-2000:]
            assert worker.logged("redis.unreachable") == [], worker.stderr()[-2000:]
        finally:
            await sender.aclose()
            await close(reader)
            worker.stop()
            shards.configure(1)


async def expect_refused(url: str) -> str:
    client = connect(url)
    try:
        with pytest.raises(RedisError) as failure:
            await client.ping()
        return str(failure.value)
    finally:
        await client.aclose()


async def test_without_a_client_certificate_or_with_another_ca_the_connection_fails(
    tls: tuple[RedisServer, TlsFiles],
) -> None:
    server, files = tls
    good = connect(url_of(server, files))
    try:
        assert await good.ping()
    finally:
        await good.aclose()
    # The server wants a client certificate (tls-auth-clients yes).
    await expect_refused(url_of(server, files, ssl_certfile="", ssl_keyfile=""))
    # A CA that did not sign the server's certificate: verification fails.
    message = await expect_refused(url_of(server, files, ssl_ca_certs=str(files.other_ca)))
    assert "certificate verify failed" in message, message
    # The certificate names 127.0.0.1 and localhost; another name for the same address fails the
    # host name check, which stepq turns on by default...
    other_name = await expect_refused(url_of(server, files, host="127.0.0.2"))
    assert "127.0.0.2" in other_name or "hostname" in other_name.lower() or "verify" in other_name, other_name
    # ...and can be turned off, for servers whose certificates name no host (the CA still checked).
    unchecked = connect(url_of(server, files, ssl_check_hostname="false").replace("localhost", "127.0.0.1"))
    try:
        assert await unchecked.ping()
    finally:
        await unchecked.aclose()
    # A plain connection to the TLS port gets no Redis answer.
    with pytest.raises(RedisConnectionError):
        plain = connect(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
        try:
            await plain.ping()
        finally:
            await plain.aclose()


def test_tls_settings_are_checked_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(RedisConfigError, match=r"ssl_ca_certs=.*no readable file"):
        connect(f"rediss://127.0.0.1:1/0?ssl_ca_certs={tmp_path / 'missing.crt'}")
    with pytest.raises(RedisConfigError, match="need TLS: use rediss://"):
        connect("redis://127.0.0.1:1/0?ssl_cert_reqs=required")
    with pytest.raises(RedisConfigError, match="unknown query parameter 'ssl_ca_cert'"):
        connect("rediss://127.0.0.1:1/0?ssl_ca_cert=/etc/ssl/ca.crt")
    with pytest.raises(RedisConfigError, match="ssl_cert_reqs='maybe'"):
        connect("rediss://127.0.0.1:1/0?ssl_cert_reqs=maybe")
