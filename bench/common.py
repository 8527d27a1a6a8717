"""What every benchmark shares: statistics, a private redis-server, worker subprocesses, results.

Nothing here touches the shared Redis on 6379: each benchmark gets a fresh redis-server of its own on
a free loopback port, with persistence off, and every process a benchmark starts is stopped by its
process id when the benchmark ends (or when the suite exits, whatever happened).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import itertools
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from redis.asyncio import Redis

REPO_ROOT = Path(__file__).resolve().parent.parent

#: stepq's default poll delay; the raw arq baseline polls at the same rate.
POLL_DELAY_S = 0.005
#: stepq's default concurrency (arq ``max_jobs``); the raw arq baseline uses the same.
CONCURRENCY = 100
#: The database where benchmark functions record their timestamps (stepq and arq use db 0).
MARKS_DB = 1
#: The queue the raw arq baseline worker polls.
ARQ_QUEUE = "bench:arq:queue"
#: The stepq app every benchmark function belongs to (``bench.apps:client``).
APP_ID = "bench"
#: Environment variable telling the benchmark functions where to record timestamps.
MARKS_ENV = "STEPQ_BENCH_MARKS_URL"


class BenchError(Exception):
    """A benchmark could not produce its figure (a timeout, a process that died, ...)."""


# -- statistics -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """n, min, p50, p90, p99, max and mean of ``values``, rounded."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- results ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A pass/fail rule: ``ratio<=`` / ``ratio>=`` compare stepq to the baseline, ``<=`` the value itself."""

    kind: Literal["ratio<=", "ratio>=", "<="]
    limit: float

    def text(self, unit: str) -> str:
        if self.kind == "ratio<=":
            return f"≤ {self.limit:g}x base"
        if self.kind == "ratio>=":
            return f"≥ {self.limit:g}x base"
        return f"≤ {self.limit:g}{unit}" if unit == "x" else f"≤ {self.limit:g} {unit}"

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        if self.kind == "<=":
            return None if value is None else value <= self.limit
        if ratio is None:
            return None
        return ratio <= self.limit if self.kind == "ratio<=" else ratio >= self.limit


@dataclasses.dataclass(slots=True)
class Metric:
    """One row of the table: stepq's figure, the baseline measured in the same run, and the target."""

    name: str
    unit: str
    stepq: float | None
    baseline: float | None = None
    #: What the baseline is (e.g. "raw arq chained hop").
    baseline_label: str = ""
    target: Target | None = None
    #: The stepq figure is a lower bound (e.g. recovery did not happen within the time allowed).
    censored: bool = False
    note: str = ""
    ratio: float | None = dataclasses.field(init=False, default=None)
    passed: bool | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.stepq is not None and self.baseline:
            self.ratio = self.stepq / self.baseline
        if self.target is not None:
            self.passed = self.target.check(self.stepq, self.ratio)
            if self.censored and self.target.kind == "<=" and self.passed:
                self.passed = None  # a lower bound under the limit proves nothing

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "stepq": _round(self.stepq),
            "baseline": _round(self.baseline),
            "baseline_label": self.baseline_label,
            "ratio": _round(self.ratio),
            "target": self.target.text(self.unit) if self.target else None,
            "passed": self.passed,
            "censored": self.censored,
            "note": self.note,
        }


def _round(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, 4)


@dataclasses.dataclass(slots=True)
class BenchResult:
    name: str
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "metrics": [m.to_dict() for m in self.metrics],
            "details": self.details,
        }


# -- processes --------------------------------------------------------------------------------------

_LIVE: dict[int, Proc] = {}


class Proc:
    """A child process in its own session, output to a log file; stopped by its own process group id."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        _LIVE[self.pid] = self

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def send(self, sig: int) -> None:
        """Signal this process's group (it leads a session of its own, so the group is ours alone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.popen.returncode}) before {needle!r}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no {needle!r} within {timeout:g} s:\n{self.log_tail()}")
            await asyncio.sleep(0.02)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.alive():
            self.send(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        _LIVE.pop(self.pid, None)

    def kill(self) -> None:
        self.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        _LIVE.pop(self.pid, None)


def stop_all() -> None:
    """Stop every process this suite started and has not stopped yet (redis last)."""
    for proc in sorted(_LIVE.values(), key=lambda p: p.name.startswith("redis")):
        proc.stop(grace=3.0)


atexit.register(stop_all)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- Redis ------------------------------------------------------------------------------------------


def find_redis_server() -> str:
    """``$STEPQ_BENCH_REDIS_SERVER``, else the newest redis-server on PATH (the venv may shadow Redis 7)."""
    explicit = os.environ.get("STEPQ_BENCH_REDIS_SERVER")
    if explicit:
        return explicit
    found: list[tuple[tuple[int, ...], str]] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found.append((redis_version(str(candidate)), str(candidate)))
    if not found:
        raise BenchError("no redis-server on PATH (set STEPQ_BENCH_REDIS_SERVER)")
    return max(found, key=lambda f: f[0])[1]


def redis_version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0,)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else (0,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server on a free loopback port, persistence off (unless ``extra_args`` turn it on,
    e.g. ``("--appendonly", "yes", "--appendfsync", "always")``: later arguments win)."""

    def __init__(self, binary: str, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.port = 0
        self.proc: Proc | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            self.port = free_port()
            argv = [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--daemonize", "no",
                *self.extra_args,
            ]  # fmt: skip
            self.proc = Proc(f"redis-{self.port}", argv, self.workdir / f"redis-{self.port}.log")
            if await self._ours():
                return
            self.proc.stop()
        raise BenchError(f"could not start {self.binary} on a free port")

    async def _ours(self) -> bool:
        """Wait until the server on our port answers and is our child (not a server already there)."""
        assert self.proc is not None
        deadline = time.monotonic() + 10
        client = Redis.from_url(self.url())
        try:
            while time.monotonic() < deadline and self.proc.alive():
                try:
                    info = await client.info("server")
                    return int(info["process_id"]) == self.proc.pid
                except (ConnectionError, OSError, Exception):
                    await asyncio.sleep(0.02)
            return False
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Server(Protocol):
    """What workers are started against: a private redis-server, or a local Redis Cluster (bench/cluster.py)."""

    #: Where the workers' logs go.
    workdir: Path

    def url(self, db: int = 0) -> str: ...


# -- the suite's environment ------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Env:
    """Options and helpers handed to each benchmark."""

    quick: bool
    workdir: Path
    redis_binary: str
    profile_dir: Path | None = None
    procs: list[Proc] = dataclasses.field(default_factory=list)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @contextlib.asynccontextmanager
    async def redis(self, name: str) -> AsyncIterator[RedisServer]:
        """A fresh private redis-server for one benchmark; it and every process started meanwhile stop after."""
        server = RedisServer(self.redis_binary, self.workdir / name)
        await server.start()
        started = len(self.procs)
        try:
            yield server
        finally:
            for proc in reversed(self.procs[started:]):
                proc.stop()
            del self.procs[started:]
            server.stop()

    def _env(self, server: Server, extra: dict[str, str] | None) -> dict[str, str]:
        # STEPQ_METRICS_PORT passes (0: each worker on a free port): the metrics' cost can be measured
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPQ_") or k == "STEPQ_METRICS_PORT"}
        pythonpath = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1",
                "STEPQ_REDIS_URL": server.url(),
                MARKS_ENV: server.url(MARKS_DB),
            }
        )
        env.update(extra or {})
        return env

    def _log(self, server: Server, name: str) -> Path:
        return server.workdir / f"{name}-{len(self.procs)}.log"

    async def stepq_workers(
        self,
        server: Server,
        n: int = 1,
        *,
        env: dict[str, str] | None = None,
        concurrency: int = CONCURRENCY,
        timeout: float = 60.0,
    ) -> list[Proc]:
        """Start ``n`` ``stepq worker bench.apps:client`` processes and wait until each has registered."""
        argv = [
            sys.executable, "-m", "stepq.workers.cli", "worker", "bench.apps:client",
            "--redis-url", server.url(),
            "--concurrency", str(concurrency),
        ]  # fmt: skip
        procs = []
        for _ in range(n):
            proc = Proc("stepq-worker", argv, self._log(server, "stepq-worker"), self._env(server, env))
            self.procs.append(proc)
            procs.append(proc)
        for proc in procs:
            await proc.wait_for_log("worker.started", timeout)
        return procs

    async def arq_workers(
        self,
        server: RedisServer,
        n: int = 1,
        *,
        poll_delay: float = POLL_DELAY_S,
        concurrency: int = CONCURRENCY,
        timeout: float = 60.0,
        queue: str = ARQ_QUEUE,
    ) -> list[Proc]:
        """Start ``n`` raw arq baseline workers (``bench/arq_worker.py``) and wait until each polls."""
        argv = [
            sys.executable, "-m", "bench.arq_worker",
            "--redis-url", server.url(),
            "--poll-delay", repr(poll_delay),
            "--max-jobs", str(concurrency),
            "--queue", queue,
        ]  # fmt: skip
        procs = []
        for _ in range(n):
            proc = Proc("arq-worker", argv, self._log(server, "arq-worker"), self._env(server, None))
            self.procs.append(proc)
            procs.append(proc)
        for proc in procs:
            await proc.wait_for_log("arq-baseline ready", timeout)
        return procs


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.01,
    watch: Sequence[Proc] = (),
) -> None:
    """Poll ``condition`` until true; BenchError after ``timeout`` s or when a watched process died."""
    deadline = time.monotonic() + timeout
    while not await condition():
        for proc in watch:
            if not proc.alive():
                raise BenchError(f"{proc.name} (pid {proc.pid}) died while waiting for {what}:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def floats(redis: Redis, key: str) -> list[float]:
    """A list of numbers recorded with RPUSH."""
    return [float(v) for v in await redis.lrange(key, 0, -1)]  # type: ignore[misc]


def gaps(timestamps: Sequence[float]) -> list[float]:
    """Differences between consecutive timestamps, in milliseconds."""
    return [(b - a) * 1000 for a, b in itertools.pairwise(timestamps)]


async def redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def command_calls(redis: Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


# -- the orchestrator's connections ---------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Clients:
    """The benchmark's own connections: stepq's db, the marks db, arq's enqueue API and a stepq sender."""

    redis: Redis
    marks: Redis
    arq: Any  # arq.connections.ArqRedis
    sender: Any  # stepq.Client

    async def send(self, name: str, data: dict[str, Any] | Sequence[dict[str, Any]]) -> list[str]:
        """Send one event (or one per data dict, in a single call) through stepq's public client."""
        import stepq

        batch = [data] if isinstance(data, dict) else list(data)
        return list(await self.sender.send([stepq.Event(name=name, data=d) for d in batch]))

    async def prefill_arq(self, queue: str, function: str, args_list: Sequence[Sequence[Any]]) -> None:
        """Write arq jobs as ``enqueue_job`` would (same bytes), in pipelines: only fast set-up."""
        import uuid

        import msgpack
        from arq.constants import job_key_prefix
        from arq.jobs import serialize_job

        now = int(time.time() * 1000)
        for start in range(0, len(args_list), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for args in args_list[start : start + 1000]:
                    job_id = uuid.uuid4().hex
                    blob = serialize_job(function, tuple(args), {}, None, now, serializer=msgpack.packb)
                    pipe.psetex(job_key_prefix + job_id, 86_400_000, blob)
                    pipe.zadd(queue, {job_id: now})
                await pipe.execute()

    async def aclose(self) -> None:
        await self.sender.aclose()
        await self.arq.aclose()
        await self.marks.aclose()
        await self.redis.aclose()


@contextlib.asynccontextmanager
async def clients(server: RedisServer) -> AsyncIterator[Clients]:
    import msgpack
    from arq.connections import ArqRedis
    from redis.asyncio import ConnectionPool

    import stepq

    made = Clients(
        redis=Redis.from_url(server.url()),
        marks=Redis.from_url(server.url(MARKS_DB)),
        arq=ArqRedis(
            connection_pool=ConnectionPool.from_url(server.url()),
            job_serializer=msgpack.packb,
            job_deserializer=lambda b: msgpack.unpackb(b, raw=False),
            default_queue_name=ARQ_QUEUE,
        ),
        sender=stepq.Client(f"{APP_ID}-sender", redis_url=server.url()),
    )
    try:
        yield made
    finally:
        await made.aclose()


def stepq_queue() -> str:
    """The arq queue (a zset) that the bench app's stepq workers poll."""
    from stepq.runtime import keys

    return keys.queue(0, APP_ID)


async def queues_idle(redis: Redis) -> bool:
    """True when neither the stepq queue nor the arq baseline queue holds a job due now."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(stepq_queue(), "-inf", now_ms)
        pipe.zcount(ARQ_QUEUE, "-inf", now_ms)
        due = await pipe.execute()
    return sum(int(n) for n in due) == 0


IO_COUNTERS = ("total_reads_processed", "total_net_input_bytes", "total_net_output_bytes", "total_commands_processed")


async def io_stats(redis: Redis) -> dict[str, int]:
    """Redis's I/O counters: reads (about one per client round trip), bytes in and out, commands
    (commands called by Lua scripts included)."""
    info = await redis.info("stats")
    return {name: int(info.get(name, 0)) for name in IO_COUNTERS}


def io_per(before: dict[str, int], after: dict[str, int], units: float) -> dict[str, float]:
    """The counters' growth per unit of work (step, job, ...), named shortly."""
    short = {
        "total_reads_processed": "round_trips",
        "total_net_input_bytes": "bytes_in",
        "total_net_output_bytes": "bytes_out",
        "total_commands_processed": "commands",
    }
    return {short[k]: round((after[k] - before[k]) / units, 2) for k in IO_COUNTERS}
