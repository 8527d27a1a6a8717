"""Redis connections with the timeouts and reconnect policy stepq relies on."""

from __future__ import annotations

import socket
import time
from typing import Any, TypeAlias

from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from . import keys, redis_connections, redis_urls, shards

#: A client of either deployment: one Redis (or a Sentinel-managed primary), or a Redis Cluster.
RedisClient: TypeAlias = Redis | RedisCluster

#: Kernel-level limits that cost nothing per command. An idle connection to a dead peer is noticed by
#: keepalive within about 5 + 3 x 2 s; a request the peer never acknowledges (link down, packets
#: dropped) fails after TCP_USER_TIMEOUT instead of the kernel's retry limit (15 retries: minutes).
#: Workers also run a watchdog (workers/watchdog.py), which catches what TCP cannot see (a proxy or
#: middlebox that acknowledges but does not forward).
_KEEPALIVE: dict[int, int] = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3}
if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
    _KEEPALIVE[socket.TCP_USER_TIMEOUT] = 10_000  # ms


def pool_options(*, hot_path: bool = False) -> dict[str, Any]:
    """Bounded timeouts and a few quick retries: a command fails clearly after a short outage
    rather than hanging; workers ride out longer ones at their own level.

    ``hot_path`` (workers): no per-read timeout and no periodic PING. Each costs redis-py an
    asyncio timeout or a clock check on every command (about a fifth of a worker's CPU per step);
    a worker relies on its watchdog (a probe with a timeout, on a connection of its own) and on the
    kernel limits above to notice a Redis that stopped answering.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "socket_keepalive_options": _KEEPALIVE,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if not hot_path:
        options["socket_timeout"] = 15
        options["health_check_interval"] = 30
    return options


class HotPathPool(ConnectionPool):
    """A pool that hands out an idle connection without a trip through the event loop.

    redis-py checks every connection it takes from the pool for unread bytes by reading its socket
    under a zero timeout: one event-loop iteration, a task cancellation and a caught TimeoutError per
    command (about a tenth of a millisecond of a worker's warm step hop, all told). Bytes left unread
    mean a reply nobody read, which redis-py prevents by closing a connection whenever a command is
    interrupted; so here a connection whose buffers are empty and whose peer has not closed it is
    handed out as it is, and any other goes through redis-py's own check (which reconnects it).
    """

    # redis-py's own get_connection, without the wrapper that inspects its arguments for a
    # deprecation warning on every call (none are passed: Redis.execute_command passes none)
    get_connection = getattr(ConnectionPool.get_connection, "__wrapped__", ConnectionPool.get_connection)

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if _idle_and_clean(connection):
            return
        await super().ensure_connection(connection)


class HotPathSentinelPool(HotPathPool, SentinelConnectionPool):
    """``HotPathPool``'s shortcut on a pool whose connections ask Sentinel where the master is."""


def _idle_and_clean(connection: AbstractConnection) -> bool:
    """Connected, nothing buffered above the socket (by asyncio or hiredis), no end of stream seen."""
    stream = getattr(connection, "_reader", None)
    parser = getattr(connection, "_parser", None)
    if stream is None or getattr(connection, "_writer", None) is None or type(parser) is not _AsyncHiredisParser:
        return False
    if not getattr(parser, "_connected", False):
        return False
    has_data = getattr(getattr(parser, "_reader", None), "has_data", None)
    buffered = getattr(stream, "_buffer", None)
    if has_data is None or buffered is None or buffered or stream.at_eof():
        return False
    return not has_data()


def make_pool(url: str, *, max_connections: int | None = None, hot_path: bool = False) -> ConnectionPool:
    """A connection pool for ``url`` (any form ``stepq.runtime.redis_urls`` accepts: TLS, Sentinel);
    replies stay bytes (msgpack). ``hot_path``: see ``pool_options`` and ``HotPathPool``."""
    options = pool_options(hot_path=hot_path)
    if max_connections is not None:
        options["max_connections"] = max_connections
    if hot_path:
        return redis_urls.make_pool(url, options, pool_class=HotPathPool, sentinel_pool_class=HotPathSentinelPool)
    return redis_urls.make_pool(url, options)


def connect(url: str, *, max_connections: int | None = None) -> Redis:
    """An asyncio client for ``url``."""
    return Redis(connection_pool=make_pool(url, max_connections=max_connections))


async def open_redis(url: str, *, max_connections: int | None = None, hot_path: bool = False) -> RedisClient:
    """A client for the Redis at ``url``, after finding out what it is, and this process's shard
    count set (``shards.configure``): a ``RedisCluster`` (discovered from the one node ``url`` names)
    and all ``SHARD_LIMIT`` shards when that node runs in cluster mode; else a ``Redis`` (see
    ``make_pool``) and the count stored under ``keys.SHARD_COUNT``, 1 when absent.

    Raises what Redis raises when it cannot be reached (callers retry or report), and ``ValueError``
    for a stored shard count out of range or a cluster URL naming a database other than 0."""
    client = Redis(connection_pool=make_pool(url, max_connections=max_connections, hot_path=hot_path))
    try:
        clustered = bool((await client.info("cluster")).get("cluster_enabled"))
        if not clustered:
            stored = await client.get(keys.SHARD_COUNT)
            shards.configure(1 if stored is None else shards.parse_count(stored, keys.SHARD_COUNT))
            return client
    except BaseException:
        await client.aclose()
        raise
    await client.aclose()
    cluster = open_cluster(url, hot_path=hot_path)
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    shards.configure(shards.SHARD_LIMIT)
    return cluster


class SteadyCluster(RedisCluster):
    """A ``RedisCluster`` that never forgets a node it has seen.

    redis-py drops a node from the nodes it rediscovers the cluster from (its startup nodes)
    whenever a command to that node fails to connect, and a failed command also closes every
    connection of the client, failing the commands in flight to the other nodes too: during a
    failover a busy client can drop every node, after which it can never reach the cluster again
    ("Redis Cluster cannot be connected ...: None"). Before each rediscovery this client puts back
    every node it has known (unreachable ones are skipped quickly: their connections are refused).
    Its nodes' connections are stepq's (``redis_connections``), so that a command whose connection
    that closing caught before it was sent fails as a lost connection, which callers ride out.
    """

    async def initialize(self) -> SteadyCluster:
        manager = self.nodes_manager
        known: dict[str, Any] = self.__dict__.setdefault("_known_nodes", {})
        self._use_stepq_connections()
        for name, node in known.items():
            manager.startup_nodes.setdefault(name, node)
        # A node that stopped answering is asked last for the slots: redis-py asks the nodes in
        # turn, without a timeout on the hot path, and stops at the first full answer.
        silent = self.__dict__.get("_silent", {})
        if silent:
            order = sorted(manager.startup_nodes.items(), key=lambda item: silent.get(item[0], 0.0))
            manager.startup_nodes.clear()
            manager.startup_nodes.update(order)
        await super().initialize()
        known.update(manager.startup_nodes)
        return self

    def silent(self, node_name: str) -> None:
        """``node_name`` (``host:port``) stopped answering (workers/watchdog.py): the slots are asked
        of every other node first from now on, the most recently silent last."""
        self.__dict__.setdefault("_silent", {})[node_name] = time.monotonic()

    def _use_stepq_connections(self) -> None:
        # redis-py takes no connection class for a cluster's nodes: its own (TCP or TLS) gives way
        # to stepq's before the first connection is made. (The nodes manager shares these settings.)
        settings = self.connection_kwargs
        settings["connection_class"] = redis_connections.for_cluster(settings["connection_class"])
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = settings["connection_class"]


def open_cluster(url: str, *, hot_path: bool = False) -> RedisCluster:
    """A cluster client for ``url`` (any one node) with ``pool_options``' timeouts and retries; redis-py
    follows MOVED and ASK, and retries CLUSTERDOWN and TRYAGAIN a few times after re-reading the slots."""
    # (redis_urls checks the URL: TCP, database 0; TLS settings and the password file apply)
    options = {**pool_options(hot_path=hot_path), **redis_urls.cluster_options(url)}
    cluster: RedisCluster = SteadyCluster(decode_responses=False, **options)
    return cluster


async def close(client: RedisClient) -> None:
    """Close ``client`` and its connections (a ``Redis`` given its pool keeps it open on ``aclose()``)."""
    if isinstance(client, Redis):  # (this way round: mypy cannot narrow on RedisCluster)
        await client.aclose(close_connection_pool=True)
    else:
        await client.aclose()
