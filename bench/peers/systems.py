"""The systems compared, as the orchestrator sees them: how to start each one's servers and workers,
where its driver runs, its default durability, its versions, or why it is skipped.

Every process is a ``bench.common.Proc`` (own session, log file, stopped by its process id); each
system in a block gets fresh state (a new redis-server, Restate base directory or Postgres database).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench.common import CONCURRENCY, POLL_DELAY_S, REPO_ROOT, BenchError, Proc, RedisServer, free_port, redis_version
from bench.peers import setup
from bench.peers.env import DB_ENV, INGRESS_ENV, MARKS_ENV

AOF_ALWAYS = ("--appendonly", "yes", "--appendfsync", "always")


@dataclasses.dataclass(slots=True)
class Ctx:
    """What a block gives a system: a directory, the redis-server binary, the marks database."""

    workdir: Path
    redis_binary: str
    marks_url: str
    pg_url: str
    procs: list[Proc] = dataclasses.field(default_factory=list)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPQ_")}
        pythonpath = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env.update({"PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONUNBUFFERED": "1", MARKS_ENV: self.marks_url})
        return env | extra

    def proc(self, name: str, argv: list[str], extra_env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, self.workdir / f"{name}-{len(self.procs)}.log", self.env(extra_env))
        self.procs.append(proc)
        return proc


class System:
    """One row of the table. Subclasses start the servers (``start``) and the workers (``workers``)."""

    name = ""
    #: What ``--only`` selects it by.
    family = ""
    #: The process the driver runs in (stepq's venv or the peers').
    python = sys.executable
    #: Its default durability, in the table's words.
    durability = ""
    #: W3's extra random 0..X s between starts (for a system polling every X s, so starts do not phase-lock).
    extra_gap_s = 0.0
    #: Its workers can reach its store through bench/peers/slow_link.py (W5): Redis-backed systems.
    linkable = False

    def missing(self, pg_url: str) -> str | None:
        """Why this system cannot run here, or None."""
        return None

    def versions(self, redis_binary: str) -> dict[str, str]:
        """Versions of what it runs (and the settings that decide its durability), for the table."""
        return {}

    def settings(self) -> str:
        return ""

    async def start(self, ctx: Ctx) -> None:
        return None

    async def workers(self, ctx: Ctx, n: int, redis_url: str | None = None) -> list[Proc]:
        """Start ``n`` workers (``redis_url``: the address they reach the store at, when ``linkable``)."""
        raise NotImplementedError

    def driver_env(self) -> dict[str, str]:
        return {}

    def store_url(self) -> str | None:
        """The Redis the system keeps its state in, when it is one (for its Redis costs)."""
        return None

    async def stop(self, ctx: Ctx) -> None:
        return None


def _not_linkable(system: System, redis_url: str | None) -> None:
    if redis_url is not None:
        raise BenchError(f"{system.name} keeps no state in Redis: its workers take no redis_url")


def _peers_venv_missing(package: str) -> str | None:
    if setup.package_version(package) is None:
        return f"{package} is not installed in {setup.peers_dir() / 'venv'} (run: python -m bench.peers --setup)"
    return None


def _py_version(package: str) -> str:
    return importlib.metadata.version(package)


class _RedisBacked(System):
    """A system on a private redis-server of its own (stepq, arq, Celery)."""

    redis_args: tuple[str, ...] = ()
    linkable = True

    def __init__(self) -> None:
        self.redis: RedisServer | None = None

    async def start(self, ctx: Ctx) -> None:
        self.redis = RedisServer(ctx.redis_binary, ctx.workdir / f"redis-{self.name}", self.redis_args)
        await self.redis.start()

    def url(self) -> str:
        assert self.redis is not None
        return self.redis.url()

    def driver_env(self) -> dict[str, str]:
        return {"STEPQ_REDIS_URL": self.url()}

    def store_url(self) -> str | None:
        return self.url()

    async def stop(self, ctx: Ctx) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def versions(self, redis_binary: str) -> dict[str, str]:
        return {"redis-server": ".".join(map(str, redis_version(redis_binary)))}


class Stepq(_RedisBacked):
    name = family = "stepq"
    durability = "Redis defaults (appendonly no, RDB snapshots): a step is acknowledged from memory"

    async def workers(self, ctx: Ctx, n: int, redis_url: str | None = None) -> list[Proc]:
        url = redis_url or self.url()
        argv = [
            sys.executable, "-m", "stepq.workers.cli", "worker", "bench.peers.stepq_app:client",
            "--redis-url", url, "--concurrency", str(CONCURRENCY),
        ]  # fmt: skip
        procs = [ctx.proc(f"{self.name}-worker", argv, {"STEPQ_REDIS_URL": url}) for _ in range(n)]
        for proc in procs:
            await proc.wait_for_log("worker.started", 60)
        return procs

    def versions(self, redis_binary: str) -> dict[str, str]:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        return {
            "stepq": f"{_py_version('stepq')} ({git.stdout.strip() or '?'})",
            "arq": _py_version("arq"),
            "redis-py": _py_version("redis"),
        } | super().versions(redis_binary)

    def settings(self) -> str:
        return f"blocking reads (no polling), concurrency {CONCURRENCY}, async steps"


class StepqAofAlways(Stepq):
    name = "stepq-aof-always"
    redis_args = AOF_ALWAYS
    durability = "Redis appendonly yes, appendfsync always: every write on disk before it is acknowledged"


class Arq(_RedisBacked):
    name = family = "arq"
    durability = "not durable: a chain of jobs, each enqueueing the next; Redis defaults (no AOF)"

    async def workers(self, ctx: Ctx, n: int, redis_url: str | None = None) -> list[Proc]:
        argv = [sys.executable, "-m", "bench.peers.arq_app", "--redis-url", redis_url or self.url()]
        procs = [ctx.proc("arq-worker", argv, {}) for _ in range(n)]
        for proc in procs:
            await proc.wait_for_log("arq-peer ready", 60)
        return procs

    def versions(self, redis_binary: str) -> dict[str, str]:
        return {"arq": _py_version("arq")} | super().versions(redis_binary)

    def settings(self) -> str:
        return f"bench/arq_worker.py's settings: poll {POLL_DELAY_S * 1000:g} ms, max_jobs {CONCURRENCY}"


class Celery(_RedisBacked):
    name = family = "celery"
    python = str(setup.venv_python())
    durability = "not durable: Redis broker and results (no AOF), ack on receipt, countdown held in worker memory"

    def missing(self, pg_url: str) -> str | None:
        return _peers_venv_missing("celery")

    async def workers(self, ctx: Ctx, n: int, redis_url: str | None = None) -> list[Proc]:
        # One worker with n prefork children (Celery's way to use n cores); broker and backend at redis_url.
        argv = [
            self.python, "-m", "celery", "-A", "bench.peers.celery_app", "worker", "--pool", "prefork",
            "--concurrency", str(n), "--loglevel", "INFO", "--hostname", f"peer-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        proc = ctx.proc("celery-worker", argv, {"STEPQ_REDIS_URL": redis_url or self.url()})
        await proc.wait_for_log(" ready.", 60)
        return [proc]

    def versions(self, redis_binary: str) -> dict[str, str]:
        pkgs = {p: setup.package_version(p) or "?" for p in ("celery", "kombu", "redis")}
        return {"celery": pkgs["celery"], "kombu": pkgs["kombu"], "redis-py": pkgs["redis"]} | super().versions(
            redis_binary
        )

    def settings(self) -> str:
        return "prefork, -c 1 (-c 2 for W2), a chain of peer.s() links, countdown for the sleep"


def _psql(pg_url: str, sql: str, timeout: float = 60) -> str:
    out = subprocess.run(
        ["psql", pg_url, "-v", "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise BenchError(f"psql {sql!r}: {out.stderr.strip()}")
    return out.stdout.strip()


def _with_db(pg_url: str, db: str) -> str:
    parts = urlsplit(pg_url)
    return urlunsplit(parts._replace(path=f"/{db}"))


class Dbos(System):
    name = family = "dbos"
    python = str(setup.venv_python())
    poll_s = 1.0
    extra_gap_s = 1.0
    durability = "Postgres: a commit per step (synchronous_commit on, fsync on); queue poll 1 s (default)"

    def __init__(self) -> None:
        self.db = ""
        self.pg_url = ""

    def missing(self, pg_url: str) -> str | None:
        self.pg_url = pg_url
        if shutil.which("psql") is None:
            return "no psql on PATH (apt-get install postgresql-client), so no database for DBOS"
        try:
            _psql(pg_url, "select 1", timeout=10)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            detail = " ".join(str(exc).split())  # psql's message, on one line
            return f"no PostgreSQL answers at {pg_url} ({detail[:160]}); set --pg-url or $STEPQ_PEERS_PG_URL"
        return _peers_venv_missing("dbos")

    async def start(self, ctx: Ctx) -> None:
        self.pg_url = ctx.pg_url
        self.db = f"bench_peers_{uuid.uuid4().hex[:10]}"
        _psql(ctx.pg_url, f"CREATE DATABASE {self.db}")

    def db_url(self) -> str:
        return _with_db(self.pg_url, self.db)

    async def workers(self, ctx: Ctx, n: int, redis_url: str | None = None) -> list[Proc]:
        _not_linkable(self, redis_url)
        argv = [self.python, "-m", "bench.peers.dbos_app", "--db", self.db_url(), "--poll", repr(self.poll_s)]
        procs = [ctx.proc(f"{self.name}-worker", argv, {}) for _ in range(n)]
        for proc in procs:
            await proc.wait_for_log("dbos-peer ready", 90)
        return procs

    def driver_env(self) -> dict[str, str]:
        return {DB_ENV: self.db_url()}

    async def stop(self, ctx: Ctx) -> None:
        if self.db:
            with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
                _psql(ctx.pg_url, f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
            self.db = ""

    def versions(self, redis_binary: str) -> dict[str, str]:
        pkgs = {p: setup.package_version(p) or "?" for p in ("dbos", "psycopg", "sqlalchemy")}
        try:
            server = _psql(self.pg_url, "show server_version", timeout=10)
            names = ("synchronous_commit", "fsync", "wal_sync_method", "full_page_writes")
            settings = [f"{n}={_psql(self.pg_url, f'show {n}', timeout=10)}" for n in names]
            pkgs["postgresql"] = f"{server.split()[0]} ({', '.join(settings)})"
        except (BenchError, subprocess.TimeoutExpired, OSError):
            pkgs["postgresql"] = "?"
        return pkgs

    def settings(self) -> str:
        return f"queue perf: polling_interval_sec={self.poll_s:g}, worker_concurrency=100; DBOSClient.enqueue"


class DbosPoll1ms(Dbos):
    name = "dbos-poll-1ms"
    poll_s = 0.001
    extra_gap_s = 0.0
    durability = "Postgres: a commit per step (synchronous_commit on, fsync on); queue poll 1 ms"


class Restate(System):
    name = family = "restate"
    python = str(setup.venv_python())

    durability = (
        "Restate server defaults: replicated loglet, replication 1, log-server RocksDB WAL fsync on "
        "(rocksdb-disable-wal-fsync = false)"
    )

    def __init__(self) -> None:
        self.server: Proc | None = None
        self.admin = ""
        self.ingress = ""

    def missing(self, pg_url: str) -> str | None:
        if setup.restate_binary() is None:
            hint = "" if shutil.which("npm") else " (and there is no npm on PATH)"
            return f"no restate-server under {setup.peers_dir() / 'npm'}{hint}: run python -m bench.peers --setup"
        return _peers_venv_missing("restate-sdk") or _peers_venv_missing("hypercorn")

    async def start(self, ctx: Ctx) -> None:
        binary = setup.restate_binary()
        assert binary is not None
        base = ctx.workdir / f"restate-{uuid.uuid4().hex[:6]}"
        base.mkdir(parents=True)
        node, admin, ingress = free_port(), free_port(), free_port()
        config = base / "restate.toml"
        config.write_text(
            "\n".join(
                [
                    'cluster-name = "bench-peers"',
                    "disable-telemetry = true",
                    f'bind-address = "127.0.0.1:{node}"',
                    f'advertised-address = "http://127.0.0.1:{node}/"',
                    "[admin]",
                    f'bind-address = "127.0.0.1:{admin}"',
                    "[ingress]",
                    f'bind-address = "127.0.0.1:{ingress}"',
                    "",
                ]
            )
        )
        argv = [
            str(binary), "--config-file", str(config), "--base-dir", str(base / "data"),
            "--listen-mode", "tcp", "--no-logo",
        ]  # fmt: skip
        self.server = ctx.proc("restate-server", argv, {})
        self.admin, self.ingress = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{ingress}"
        await _until_ok([f"{self.admin}/health", f"{self.ingress}/restate/health"], self.server, 60)

    async def workers(self, ctx: Ctx, n: int, redis_url: str | None = None) -> list[Proc]:
        _not_linkable(self, redis_url)
        assert self.server is not None
        port = free_port()
        argv = [
            self.python, "-m", "hypercorn", "bench.peers.restate_app:app",
            "--bind", f"127.0.0.1:{port}", "--workers", str(n),
        ]  # fmt: skip
        proc = ctx.proc("restate-service", argv, {})
        await proc.wait_for_log("Running on", 60)
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                f"{self.admin}/deployments", json={"uri": f"http://127.0.0.1:{port}", "force": True}
            )
            if response.status_code >= 300:
                raise BenchError(f"registering the Restate deployment: {response.status_code} {response.text}")
        return [proc]

    def driver_env(self) -> dict[str, str]:
        return {INGRESS_ENV: self.ingress}

    async def stop(self, ctx: Ctx) -> None:
        if self.server is not None:
            self.server.stop(grace=10)
            self.server = None

    def versions(self, redis_binary: str) -> dict[str, str]:
        binary = setup.restate_binary()
        server = setup.binary_version([str(binary), "--version"]) if binary else None
        return {
            "restate-server": (server or "?").removeprefix("restate-server "),
            "restate-sdk": setup.package_version("restate-sdk") or "?",
            "hypercorn": setup.package_version("hypercorn") or "?",
        }

    def settings(self) -> str:
        return "default server config (loopback ports, no telemetry); hypercorn h2c, --workers 1 (2 for W2)"


async def _until_ok(urls: list[str], proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        for url in urls:
            while True:
                if not proc.alive():
                    raise BenchError(f"{proc.name} exited before {url} answered:\n{proc.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"{url} did not answer within {timeout:g} s:\n{proc.log_tail()}")
                await asyncio.sleep(0.1)


ALL: dict[str, type[System]] = {
    cls.name: cls for cls in (Stepq, StepqAofAlways, Restate, Dbos, DbosPoll1ms, Celery, Arq)
}
