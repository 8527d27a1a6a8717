"""Workers' connection pool (``HotPathPool``): an idle connection is handed out without a trip
through the event loop, and one that is not clean (a reply left unread, a peer that hung up) is
still checked and replaced, as redis-py's own pool does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from stepq.runtime.connection import HotPathPool, make_pool
from tests.helpers import REDIS_URL


@pytest.fixture
async def hot(redis: Redis) -> AsyncIterator[Redis]:
    client = Redis(connection_pool=make_pool(REDIS_URL, hot_path=True))
    assert isinstance(client.connection_pool, HotPathPool)
    yield client
    await client.aclose()


async def test_a_clean_idle_connection_is_handed_out_without_redis_pys_socket_probe(
    hot: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hot.ping()
    [connection] = hot.connection_pool._available_connections
    probes: list[object] = []

    async def probe() -> bool:
        probes.append(connection)
        return False

    monkeypatch.setattr(connection, "can_read_destructive", probe)
    for i in range(20):
        await hot.set(f"k{i}", i)
        assert await hot.get(f"k{i}") == str(i).encode()
    assert probes == []
    assert hot.connection_pool._available_connections == [connection]  # one connection served them all


async def test_a_connection_left_with_an_unread_reply_is_not_reused_as_it_is(hot: Redis) -> None:
    await hot.set("a", "1")
    pool = hot.connection_pool
    connection = await pool.get_connection()
    await connection.send_command("GET", "a")  # its reply is never read
    await asyncio.sleep(0.05)  # the reply reaches the connection's buffers
    await pool.release(connection)
    await hot.set("b", "2")
    assert await hot.get("b") == b"2"  # not the stale b"1"


async def test_a_connection_the_server_closed_is_reconnected_before_use(hot: Redis, redis: Redis) -> None:
    await hot.ping()
    client_id = await hot.client_id()
    assert await redis.execute_command("CLIENT", "KILL", "ID", client_id) == 1  # type: ignore[no-untyped-call]
    await asyncio.sleep(0.05)  # the end of stream reaches the connection
    assert await hot.get("missing") is None
    assert await hot.client_id() != client_id  # a new connection
