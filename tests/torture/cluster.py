"""The processes a torture run needs: a private Redis with AOF (or a local Redis Cluster of 3 masters
with a replica each, ``Settings.redis_cluster``), ``stepq worker`` processes for the
in-process app, and the HTTP path (``stepq api --dev``, the served app under uvicorn, ``stepq worker
--http``). All are real subprocesses on loopback ports, their output captured to files.

Redis runs with ``appendonly yes`` and Redis's default ``appendfsync everysec``. ``restart`` stops it
with SIGTERM: Redis then writes and fsyncs its AOF before exiting, so a graceful restart loses
nothing; only a crash (``kill_hard``) could lose the last second of writes under ``everysec``, which
is why a hard kill first switches Redis to ``appendfsync always``.

On a cluster, a "Redis restart" is a master's failover instead: one master (with its replica)
SIGKILLed, its replica promoted by the cluster (``tests/cluster.py``); the dead master stays down.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import redis as sync_redis

from stepq.runtime import keys
from stepq.workers.embedded import EmbeddedRedis
from tests.cluster import LocalCluster
from tests.helpers import STEPQ_CLI
from tests.http_fixtures import Service, free_port
from tests.torture.interpreter import RECORDS_URL_ENV
from tests.torture.program import MAX_OUTPUT_BYTES, MAX_STEPS

LOCAL_APP = "tests.apps.torture:client"
SERVED_APP = "tests.apps.torture_served:app"
SERVE_PATH = "/api/inngest"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """How the cluster's processes run."""

    #: ``stepq worker`` processes for the in-process app, and for functions served over HTTP.
    workers: int = 3
    http_workers: int = 1
    #: A killed worker's steps restart elsewhere after this (STEPQ_LEASE).
    lease_s: float = 2.0
    #: Finished runs expire after this (STEPQ_RETENTION_S); the memory check waits for it.
    retention_s: int = 30
    #: The reconciler of sleeps whose wake-up job vanished: how often, and past how late.
    timer_sweep_s: float = 1.0
    timer_overdue_s: float = 3.0
    #: How often each worker looks at a shard's outbox for messages whose sender was killed.
    outbox_sweep_s: float = 1.0
    #: Shards on the one Redis (``stepq:{registry}:shards``, set before any process opens it).
    shards: int = 1
    #: A local Redis Cluster (3 masters, a replica each; 32 shards) instead of the one Redis.
    redis_cluster: bool = False
    #: STEPQ_IDLE_CHECK (None: the default). Each worker checks one shard per idle check, so a shard
    #: whose mover was SIGKILLed waits up to 32 checks for its delayed jobs (README, cluster-core).
    idle_check_s: float | None = None

    def env(self, redis_url: str) -> dict[str, str]:
        return {
            "STEPQ_REDIS_URL": redis_url,
            "STEPQ_LEASE": str(self.lease_s),
            "STEPQ_RETENTION_S": str(self.retention_s),
            "STEPQ_TIMER_SWEEP": str(self.timer_sweep_s),
            "STEPQ_TIMER_OVERDUE": str(self.timer_overdue_s),
            "STEPQ_OUTBOX_SWEEP": str(self.outbox_sweep_s),
            "STEPQ_DRAIN_GRACE": "5",
            "STEPQ_MAX_STEPS": str(MAX_STEPS),
            "STEPQ_MAX_OUTPUT_BYTES": str(MAX_OUTPUT_BYTES),
            "STEPQ_LOG_LEVEL": "info",
            **({"STEPQ_IDLE_CHECK": str(self.idle_check_s)} if self.idle_check_s is not None else {}),
        }


class Worker(Service):
    """One ``stepq worker`` process (``http``: for functions served over HTTP)."""

    def __init__(self, name: str, http: bool, directory: Path, env: dict[str, str]) -> None:
        target = ["--http"] if http else [LOCAL_APP]
        argv = [*STEPQ_CLI, "worker", *target, "--redis-url", env["STEPQ_REDIS_URL"]]
        super().__init__(name, argv, directory, env)
        self.http = http
        self.paused = False
        self.killed = False
        self._started = False

    def started(self) -> bool:
        """True once it logged ``worker.started`` (it polls its queue)."""
        if not self._started:
            with self.stderr_path.open("rb") as f:
                self._started = b"worker.started" in f.read(200_000)
        return self._started


class Cluster:
    """Redis, the workers, the API and the served app of one torture run."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.redis = EmbeddedRedis(port=free_port(), appendonly=True, data_dir=str(directory / "redis"))
        self.redis_cluster = LocalCluster(directory / "redis-cluster") if settings.redis_cluster else None
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []
        self.api: Service | None = None
        self.app: Service | None = None
        self._count = 0

    @property
    def redis_url(self) -> str:
        """Redis's URL (on a cluster: a live node's, for the processes started from now on)."""
        return self.redis_cluster.url if self.redis_cluster is not None else self.redis.url

    @property
    def api_url(self) -> str:
        return str(self.api.url)  # type: ignore[union-attr]

    @property
    def records_url(self) -> str:
        """Where step handlers record their executions (``interpreter.Recorder``): the one Redis,
        which on a cluster run serves only the records. A cluster master killed mid-run may take
        its last writes with it (replication is asynchronous), and a lost record would look like a
        step committed without its execution: the records stay off the cluster."""
        return self.redis.url

    def env(self) -> dict[str, str]:
        return {**self.settings.env(self.redis_url), RECORDS_URL_ENV: self.records_url}

    def start(self) -> None:
        self.redis.start()
        if self.redis_cluster is not None:
            self.redis_cluster.start()
        try:
            if self.settings.shards > 1:
                with sync_redis.Redis.from_url(self.redis_url) as client:
                    client.set(keys.SHARD_COUNT, self.settings.shards)
            self._start_http_path()
            for _ in range(self.settings.workers):
                self.add_worker(http=False)
            for _ in range(self.settings.http_workers):
                self.add_worker(http=True)
            for worker in self.workers:
                self.wait_started(worker)
        except BaseException:
            self.stop()
            raise

    def _start_http_path(self) -> None:
        port = free_port()
        argv = [*STEPQ_CLI, "api", "--port", str(port), "--redis-url", self.redis_url, "--dev"]
        self.api = Service("api", argv, self.directory, self.env())
        self.api.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        self.api.wait_http(f"{self.api_url}/health")
        port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn", SERVED_APP,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        env = {**self.env(), "INNGEST_DEV": "1", "INNGEST_BASE_URL": self.api_url, "STEPQ_EVENT_API_URL": self.api_url}
        self.app = Service("app", argv, self.directory, env)
        url = f"http://127.0.0.1:{port}{SERVE_PATH}"
        self.app.wait_http(url)
        response = httpx.put(url, timeout=30)
        assert response.status_code == 200, f"sync of the served app: {response.status_code} {response.text}"

    def add_worker(self, *, http: bool) -> Worker:
        """Start a worker (not waiting for it to be ready)."""
        self._count += 1
        name = f"{'http-' if http else ''}worker-{self._count}"
        worker = Worker(name, http, self.directory, self.env())
        self.workers.append(worker)
        return worker

    def wait_started(self, worker: Worker, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not worker.started():
            if not worker.alive():
                raise AssertionError(f"{worker.name} exited with {worker.proc.returncode}:\n{worker.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{worker.name} did not start within {timeout} s:\n{worker.output()}")
            time.sleep(0.05)

    def retire(self, worker: Worker) -> None:
        """Take a dead worker out of the fleet (its logs are kept for the report)."""
        self.workers.remove(worker)
        self.retired.append(worker)

    def all_workers(self) -> list[Worker]:
        return [*self.retired, *self.workers]

    def fail_over(self, victim: int) -> str:
        """SIGKILL a master that has a replica (the ``victim``-th of them, modulo how many): its replica
        takes over. Returns what was done, for the fault log."""
        assert self.redis_cluster is not None
        # Not the node whose URL the processes are given: a worker started (to replace a killed one)
        # while that node dies could never open the cluster from it (a URL names one node).
        named = self.redis_cluster.url
        masters = [m for m in self.redis_cluster.masters() if self.redis_cluster.replicas_of(m) and m.url != named]
        assert masters, "no master has a replica left to take over"
        master = masters[victim % len(masters)]
        self.redis_cluster.kill(master)
        self.redis_cluster.wait_ok()
        return f"master :{master.port} SIGKILLed, its replica promoted"

    def restart_redis(self) -> None:
        """Graceful: SIGTERM makes Redis flush and fsync its AOF first, so nothing is lost."""
        self.redis.restart()

    def kill_redis_hard(self) -> None:
        """SIGKILL Redis after switching it to ``appendfsync always`` (every acknowledged write is on
        disk, so even a crash loses nothing acknowledged), then start it again on the same data."""
        client = sync_redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            client.config_set("appendfsync", "always")
            time.sleep(1.2)  # writes acknowledged under everysec are fsynced within a second
        finally:
            client.close()
        pid = self.redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not self.redis.running:
                break
            time.sleep(0.05)
        self.redis.start()  # the config switch is not persisted: back to everysec

    def stop(self) -> None:
        for worker in self.workers:
            if worker.paused and worker.alive():
                os.kill(worker.pid, signal.SIGCONT)
            worker.proc.kill() if worker.killed else worker.stop()
        for service in (self.app, self.api):
            if service is not None:
                service.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
        self.redis.stop()

    def output(self, tail: int = 3000) -> str:
        """The last lines of every process's stderr, for a failure message."""
        parts = []
        for service in [*self.all_workers(), self.api, self.app]:
            if service is not None:
                parts.append(f"--- {service.name} (exit {service.proc.poll()}) ---\n{service.stderr()[-tail:]}")
        return "\n".join(parts)
