"""A worker's watch on its link to Redis: notice within seconds that Redis stopped answering.

The worker's own connections carry no read timeout and no periodic PING (each costs redis-py work
on every command; see ``stepq.runtime.connection.pool_options``). So a link that goes dark without a reset
(a cable pulled, a firewall dropping packets, a proxy that stops forwarding) would leave every read
hanging until the kernel gives up, minutes later, and the worker would say nothing. Instead, a
watchdog probes Redis every ``interval_s`` on a connection of its own, with a timeout:

- a probe that gets no reply within ``timeout_s`` (confirmed once on a fresh connection, so that a
  stalled event loop or one bad connection is not taken for an outage) logs ``redis.unreachable``,
  marks Redis unreachable (the worker stops claiming work) and drops every connection of the
  worker's pool, in use or not, so that reads stuck on them fail now and are retried;
- while unreachable it starts a probe every ``retry_s``, each on a new connection, overlapping (one
  sent into the dark does not delay the next); the first reply drops the pool's connections again
  (those opened during the outage may wait on requests the network lost), logs
  ``redis.reconnected`` and lets the worker resume.

A reply that is an error (``BUSY``, ``OOM``...) counts as an answer: the link works, and the
worker's loops deal with the error. ``LOADING`` does not: Redis serves nothing yet.

On a Redis Cluster the probe goes through a cluster client of the watchdog's own (to the node
that serves the probe's key: the registry's for an app's worker), and dropping connections drops
those of every node; a master that fails is the cluster's to replace (its replica is promoted), and
the worker rides out the commands that fail meanwhile as any Redis error. A master that stops
answering without closing anything (a frozen machine: its kernel still accepts and acknowledges
the bytes) would hold the commands waiting on it for ever, so every round the watchdog also looks
for a node that left a command of the worker's (not a blocking read) without its reply for
``timeout_s`` (``stepq.runtime.redis_connections.ClusterConnection`` notes when each read began:
no command of its own while replies come); if that node fails a probe too, its connections are
dropped (``redis.node_unresponsive``) and the cluster client asks the other nodes first for the
slots, until the failover moves them to its replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection, SSLConnection
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from stepq.runtime import redis_connections
from stepq.runtime.connection import RedisClient, SteadyCluster, close
from stepq.runtime.redis_errors import ANY as REDIS_TROUBLE

log = structlog.get_logger("stepq.worker")

Probe = Callable[[RedisClient], Awaitable[Any]]

#: The settings of a cluster's node connections that a probe's cluster client takes over as they are.
_CLUSTER_SETTINGS = (
    "username",
    "password",
    "credential_provider",
    "client_name",
    "lib_name",
    "lib_version",
    "socket_keepalive",
    "socket_keepalive_options",
    "protocol",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_cert_reqs",
    "ssl_certfile",
    "ssl_check_hostname",
    "ssl_keyfile",
    "ssl_min_version",
    "ssl_ciphers",
)


async def ping(client: RedisClient) -> Any:
    """The default probe."""
    return await client.ping()


class RedisWatchdog:
    """Probes Redis for one worker; see the module docstring."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 1.5,
        retry_s: float = 0.25,
        quiet_s: float = 5.0,
        probe: Probe = ping,
    ) -> None:
        #: The worker's client: its connections are dropped when Redis goes dark and when it is back.
        self.redis = redis
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.probe = probe
        self.client = self._new_client()
        self.reachable = True
        self._up = asyncio.Event()
        self._up.set()
        self._down_since = 0.0
        #: Until when a blocking read of the worker's stands in for a probe (see ``blocking``).
        self._vouched_until = 0.0
        #: Even then, a probe at least this often: it is also the app's registration check.
        self.quiet_s = quiet_s
        self._probed_at = 0.0
        #: Called when Redis answers again after being unreachable.
        self.on_back: list[Callable[[], None]] = []

    def _new_client(self) -> RedisClient:
        """A client of the watchdog's own, with the read timeout the hot path goes without, and no
        retries: one connection to the worker's Redis, or a cluster client over the same nodes."""
        probing = {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "retry_on_error": [],
            "health_check_interval": 0,
        }
        if isinstance(self.redis, Redis):  # (this way round: mypy cannot narrow on RedisCluster)
            pool = self.redis.connection_pool
            options = {**pool.connection_kwargs, **probing}
            return Redis(
                connection_pool=ConnectionPool(connection_class=pool.connection_class, max_connections=1, **options)
            )
        settings = self.redis.nodes_manager.connection_kwargs
        cluster: RedisCluster = SteadyCluster(
            startup_nodes=[ClusterNode(node.host, node.port) for node in self.redis.get_nodes()],
            ssl=issubclass(settings.get("connection_class", Connection), SSLConnection),
            # (1, not 0: redis-py 5.3's cluster pipeline, which EXISTS uses, makes that many attempts)
            cluster_error_retry_attempts=1,
            connection_error_retry_attempts=0,
            **{name: settings[name] for name in _CLUSTER_SETTINGS if name in settings},
            **probing,
        )
        return cluster

    def blocking(self, timeout_s: float) -> None:
        """The worker sent a blocking read that Redis answers within ``timeout_s``: until then (and
        ``timeout_s`` of the watchdog's own more), its reply will tell whether Redis answers, so
        the watchdog sends no probe of its own; an idle worker costs Redis its blocking read alone."""
        self._vouched_until = time.monotonic() + timeout_s + self.timeout_s

    def answered(self) -> None:
        """The worker's blocking read got its reply."""
        self._vouched_until = time.monotonic() + self.interval_s

    async def run(self) -> None:
        """Probe forever (a background task of the worker)."""
        while True:
            await asyncio.sleep(self.interval_s)
            if isinstance(self.redis, SteadyCluster) and self.reachable:
                await self.check_nodes(self.redis)
            now = time.monotonic()
            if now < self._vouched_until and now - self._probed_at < self.quiet_s:
                continue
            self._probed_at = now
            error = await self.check()
            if error is not None:
                error = await self.check(fresh=True)
            if error is not None:
                await self._lost(error)
                await self._until_back()
                await self._back()

    async def check(self, *, fresh: bool = False) -> BaseException | None:
        """One probe on the watchdog's connection (a new one if ``fresh``): None if Redis answered."""
        if fresh:
            with contextlib.suppress(Exception):
                await _disconnect(self.client)
        return await self._probe_on(self.client)

    async def _probe_on(self, client: RedisClient) -> BaseException | None:
        try:
            await asyncio.wait_for(self.probe(client), self.timeout_s)
        except ResponseError:
            return None
        except TimeoutError:
            return TimeoutError(f"no reply within {self.timeout_s:g} s")
        except REDIS_TROUBLE as exc:
            return exc
        except Exception:
            # the probe's own fault, not Redis's: say so, and do not stop the worker over it
            log.exception("watchdog.probe_failed")
        return None

    async def check_nodes(self, cluster: SteadyCluster) -> list[str]:
        """Drop the connections to each node of ``cluster`` that left a (non-blocking) command of the
        worker's without its reply for ``timeout_s`` and does not answer a probe either: the reads
        waiting on it fail at once and are retried, by then on the replica that took its slots over.
        Returns the names of the nodes dropped. No command at all while every reply comes."""
        now = time.monotonic()
        dropped = []
        for node in cluster.get_nodes():
            # (redis-py keeps a node's connections, in use or free, in this list)
            waits = [since for c in node._connections if (since := redis_connections.awaited_since(c)) is not None]
            if not waits or now - min(waits) < self.timeout_s or await self._node_answers(node.name):
                continue
            log.warning("redis.node_unresponsive", node=node.name, waited_s=round(now - min(waits), 1))
            cluster.silent(node.name)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.disconnect(), self.timeout_s)
            dropped.append(node.name)
        return dropped

    async def _node_answers(self, name: str) -> bool:
        """Whether the node ``name`` answers a PING within ``timeout_s`` (on the watchdog's client)."""
        client = self.client
        node = client.get_node(node_name=name) if not isinstance(client, Redis) else None
        if node is None:
            return True  # not a node the watchdog's client knows (yet): no verdict
        try:
            await asyncio.wait_for(client.execute_command("PING", target_nodes=node), self.timeout_s)
        except ResponseError:
            return True
        except (TimeoutError, *REDIS_TROUBLE):
            return False
        return True

    async def _until_back(self) -> None:
        """Probe until Redis answers. Probes overlap: one starts every ``retry_s`` on a connection of
        its own and waits up to ``timeout_s``, so a probe sent into the dark does not delay noticing
        that the link is back."""
        answered = asyncio.Event()

        async def attempt() -> None:
            client = self._new_client()
            try:
                if await self._probe_on(client) is None:
                    answered.set()
            finally:
                with contextlib.suppress(Exception):
                    await close(client)

        attempts: set[asyncio.Task[None]] = set()
        try:
            while not answered.is_set():
                task = asyncio.create_task(attempt())
                attempts.add(task)
                task.add_done_callback(attempts.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), self.retry_s)
        finally:
            for task in attempts:
                task.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)

    async def wait_until_reachable(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) for Redis to be reachable; returns whether it is."""
        if not self.reachable:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), timeout)
        return self.reachable

    async def _lost(self, error: BaseException) -> None:
        self.reachable = False
        self._vouched_until = 0.0
        self._up.clear()
        self._down_since = time.monotonic()
        log.warning("redis.unreachable", error=str(error) or type(error).__name__, timeout_s=self.timeout_s)
        await self._drop_connections()

    async def _back(self) -> None:
        await self._drop_connections()
        self.reachable = True
        self._up.set()
        log.info("redis.reconnected", down_s=round(time.monotonic() - self._down_since, 3))
        for callback in self.on_back:
            callback()

    async def _drop_connections(self) -> None:
        # A read blocked on a dropped connection fails at once with ConnectionError, and redis-py
        # retries its command on a new connection: the caller sees a slow command, not a lost one.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_disconnect(self.redis), self.timeout_s)

    async def aclose(self) -> None:
        """Close the watchdog's own connection."""
        with contextlib.suppress(Exception):
            await close(self.client)


async def _disconnect(client: RedisClient) -> None:
    """Close every connection of ``client``, in use or not (each of a cluster's nodes')."""
    if isinstance(client, Redis):
        await client.connection_pool.disconnect(inuse_connections=True)
    else:
        await asyncio.gather(*(node.disconnect() for node in client.get_nodes()), return_exceptions=True)
