"""stepq's connection classes (runtime/redis_connections.py): a connection closed before its command
was written opens again and sends it (or fails as a lost connection, which every caller rides out),
never with the AttributeError redis-py 5 raises by writing to a writer that is gone.

On a cluster this is no corner: redis-py's cluster client closes every connection of every node
when one command meets a lost connection (a master failing over), including those other tasks are
opening at that moment; a worker's job task then failed with an error no retry recognized.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.asyncio.connection import Connection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError

from stepq.runtime.connection import close, open_redis
from stepq.runtime.redis_connections import FailoverConnection
from stepq.runtime.redis_errors import UNREACHABLE
from tests.cluster import LocalCluster
from tests.helpers import REDIS_URL


@pytest.mark.parametrize("closes", [1, 3], ids=["closed-once", "closed-every-time"])
async def test_a_connection_closed_while_it_opens_opens_again_or_fails_as_lost(closes: int) -> None:
    opened = asyncio.Event()
    caught = 0

    async def held_open(connection: Connection) -> None:
        # Suspend inside connect(), after the handshake, until the test has closed the connection:
        # the moment another task's close (a cluster client re-reading its slots) catches it.
        nonlocal caught
        await connection.on_connect()
        if caught < closes:
            caught += 1
            opened.set()
            while connection.is_connected:
                await asyncio.sleep(0.001)

    settings: dict[str, Any] = {k: v for k, v in parse_url(REDIS_URL).items() if k != "connection_class"}
    connection = FailoverConnection(**settings, redis_connect_func=held_open)
    sending = asyncio.create_task(connection.send_packed_command(connection.pack_command("PING")))
    for _ in range(closes):
        await asyncio.wait_for(opened.wait(), 10)
        opened.clear()
        await connection.disconnect()
    if closes > 2:  # more often than a command reopens its connection
        with pytest.raises(RedisConnectionError, match="closed before a command was sent"):
            await asyncio.wait_for(sending, 10)
        assert caught == 3
        await connection.send_packed_command(connection.pack_command("PING"))
    else:
        await asyncio.wait_for(sending, 10)
    assert await connection.read_response() == b"PONG"
    await connection.disconnect()


async def test_cluster_commands_under_repeated_closes_fail_only_as_lost_connections(cluster: LocalCluster) -> None:
    # (A client name makes opening a connection a round trip, as a password does: a close can
    # catch the connection between the socket's opening and the first command.)
    cluster_redis = await open_redis(f"{cluster.url}?client_name=stepq-test")
    assert isinstance(cluster_redis, RedisCluster)
    try:
        await _commands_under_closes(cluster_redis)
    finally:
        await close(cluster_redis)


async def _commands_under_closes(cluster_redis: RedisCluster) -> None:
    for node in cluster_redis.get_nodes():
        assert issubclass(node.connection_class, FailoverConnection), node.connection_class
    rng = random.Random(5)
    failures: list[BaseException] = []

    async def commands(n: int) -> None:
        for i in range(20):
            try:
                await cluster_redis.set(f"stepq-test:{{{n}}}:{i}", i)
            except Exception as exc:  # (judged below: only a lost connection may end one)
                failures.append(exc)

    async def closes() -> None:
        # What a command that met a lost connection does to every other command's connections.
        for _ in range(30):
            await asyncio.sleep(rng.uniform(0, 0.003))
            await cluster_redis.aclose()

    results: list[Any] = await asyncio.gather(*(commands(n) for n in range(60)), closes(), return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    wrong = [f for f in failures if not isinstance(f, UNREACHABLE)]
    assert not wrong, wrong[:3]
    # And the client serves on afterwards.
    assert await cluster_redis.set("stepq-test:after", 1)
