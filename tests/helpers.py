"""Test helpers: worker processes, waiting for runs, finding the runs an event started.

Function code runs in the worker subprocesses, so tests observe it through files (paths passed in
the event data), the workers' stdout, their structured logs on stderr, and the run state in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import RedisCluster

import stepq
from stepq.runtime import keys, shards
from stepq.runtime.connection import RedisClient
from stepq.runtime.queries import RunView, get_run, list_runs

if TYPE_CHECKING:
    from tests.cluster import LocalCluster


def _test_database(base_url: str, worker: str | None) -> str:
    """The database this test process uses: ``base_url``'s, or under pytest-xdist (``worker`` is
    ``gw0``, ``gw1``...) the base's number minus the worker's index, so that processes running tests
    side by side never flush each other's data (15 and 14 with two processes)."""
    if not worker or not worker.startswith("gw"):
        return base_url
    parts = urlsplit(base_url)
    path = parts.path.strip("/")
    number = int(path) if path.isdigit() else 0
    index = int(worker[2:])
    if index > number:
        raise RuntimeError(f"{index + 1} test processes need databases {number} down to 0; run fewer (-n)")
    return urlunsplit(parts._replace(path=f"/{number - index}"))


#: This test process's single Redis database.
SINGLE_REDIS_URL = _test_database(
    os.environ.get("STEPQ_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15", os.environ.get("PYTEST_XDIST_WORKER")
)
#: The Redis the current test uses: ``SINGLE_REDIS_URL``, or during the cluster pass of a file marked
#: ``both_deployments`` a node of the session's local cluster (the ``deployment`` fixture sets it;
#: read it as ``helpers.REDIS_URL`` or through a module-level ``REDIS_URL`` name it also sets).
REDIS_URL = SINGLE_REDIS_URL
ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True, slots=True)
class Deployment:
    """Where a test's Redis is (the ``deployment`` fixture): the single test database, or the
    session's local cluster (a ``tests.cluster.LocalCluster``)."""

    name: str
    url: str
    cluster: LocalCluster | None = None


# The `stepq` command, run by the venv's interpreter whatever PATH holds.
STEPQ_CLI = [sys.executable, "-m", "stepq.workers.cli"]
TERMINAL = ("completed", "failed", "cancelled", "skipped")


class LoggedProcess:
    """A subprocess whose stdout and stderr go to files, read back as text or structured lines."""

    def __init__(self, name: str, argv: list[str], directory: Path, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.name = name
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines this process wrote to stderr."""
        out = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out


class WorkerProcess(LoggedProcess):
    """One ``stepq worker`` subprocess with its stdout and stderr captured to files.

    It serves ``tests.apps.<app>:client`` from the repository, unless given another ``target``
    (``MODULE:CLIENT``), the ``stepq`` command to run and the directory to run it in.
    """

    def __init__(
        self,
        app: str,
        index: int,
        directory: Path,
        env: dict[str, str],
        *,
        target: str | None = None,
        command: Sequence[str] = STEPQ_CLI,
        cwd: Path = ROOT,
    ) -> None:
        self.app = app
        argv = [*command, "worker", target or f"tests.apps.{app}:client", "--redis-url", REDIS_URL]
        super().__init__(f"worker-{app}-{index}", argv, directory, env, cwd)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until the worker has registered its app (its ``worker.started`` line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(entry.get("event") == "worker.started" for entry in self.logs()):
                return
            if not self.alive():
                raise AssertionError(f"worker for {self.app} exited with {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"worker for {self.app} did not start within {timeout} s:\n{self.stderr()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class WorkerOn(WorkerProcess):
    """A ``stepq worker`` subprocess for a test app, on any Redis URL, with extra environment."""

    def __init__(self, app: str, directory: Path, redis_url: str, env: dict[str, str] | None = None) -> None:
        self.app = app
        argv = [*STEPQ_CLI, "worker", f"tests.apps.{app}:client", "--redis-url", redis_url]
        full_env = {**os.environ, "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", "STEPQ_REDIS_URL": redis_url}
        LoggedProcess.__init__(self, f"worker-{app}", argv, directory, {**full_env, **(env or {})})


StartWorkers = Callable[..., list[WorkerProcess]]


async def wait_for_run(
    redis: RedisClient, run_id: str, statuses: Sequence[str] = TERMINAL, timeout: float = 30.0
) -> RunView:
    """Poll the run until its status is one of ``statuses``; fail with its last state otherwise."""
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = await get_run(redis, run_id)
        if view is not None and view.status in statuses:
            return view
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not reach {statuses} within {timeout} s; last seen: {view}")


async def runs_of(redis: RedisClient, function: str, limit: int = 1000) -> list[RunView]:
    """Every run of ``function`` (its id, not the slug), newest first."""
    return await list_runs(redis, function=function, limit=limit)


async def run_ids_for_event(redis: RedisClient, function: str, event_id: str) -> list[str]:
    """The ids of the runs of ``function`` that the event ``event_id`` started."""
    return [view.run_id for view in await runs_of(redis, function) if event_id in view.event_ids]


async def start_run(sender: stepq.Client, redis: RedisClient, function: str, name: str, data: dict[str, Any]) -> str:
    """Send one event and return the id of the single run of ``function`` it started."""
    [event_id] = await sender.send(stepq.Event(name=name, data=data))
    run_ids = await run_ids_for_event(redis, function, event_id)
    assert len(run_ids) == 1, f"event {name} started {len(run_ids)} runs of {function}, expected 1"
    return run_ids[0]


def invocations(worker_logs: Sequence[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """The worker's ``invocation`` log lines for one run, in order."""
    return [e for e in worker_logs if e.get("event") == "invocation" and e.get("run_id") == run_id]


async def all_invocations(worker: WorkerProcess, run_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The invocation lines of a finished run, once the line of the invocation that ended it is written
    (a worker logs an invocation after the run's state changed, so it may lag the run's status)."""
    deadline = time.monotonic() + timeout
    while True:
        calls = invocations(worker.logs(), run_id)
        if any(str(c.get("outcome")).startswith(TERMINAL) for c in calls):
            return calls
        if time.monotonic() > deadline:
            raise AssertionError(f"no invocation ended run {run_id} in the worker's log:\n{worker.stderr()}")
        await asyncio.sleep(0.01)


async def running_jobs(redis: RedisClient) -> list[bytes]:
    """arq's in-progress locks: one per job a worker is running."""
    return [key async for key in redis.scan_iter(match=keys.ARQ_IN_PROGRESS + "*")]


async def wait_until_idle(redis: RedisClient, timeout: float = 5.0) -> None:
    """Wait until no worker runs a job (a run's status changes inside the job that changes it)."""
    deadline = time.monotonic() + timeout
    while await running_jobs(redis):
        assert time.monotonic() < deadline, f"jobs still running after {timeout} s: {await running_jobs(redis)}"
        await asyncio.sleep(0.01)


async def queue_entries(redis: RedisClient, app_id: str) -> dict[str, list[tuple[bytes, float]]]:
    """The app's queued jobs (due now or later) with their due times, by queue key, every shard's."""
    found = {}
    for shard in shards.shards():
        entries = await redis.zrange(keys.queue(shard, app_id), 0, -1, withscores=True)
        if entries:
            found[keys.queue(shard, app_id)] = entries
    return found


async def wait_for_empty_queue(redis: RedisClient, app_id: str, timeout: float = 5.0) -> None:
    """Wait until the app's queue (every shard's) holds no job; fail with what it holds."""
    deadline = time.monotonic() + timeout
    while queued := await queue_entries(redis, app_id):
        assert time.monotonic() < deadline, f"the queues still hold {queued} after {timeout} s"
        await asyncio.sleep(0.01)


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def sha1(text: str) -> str:
    """A step key as Inngest computes it."""
    return hashlib.sha1(text.encode()).hexdigest()


async def run_stack(redis: RedisClient, run_id: str) -> list[str]:
    """The run's step keys in completion order, as stored."""
    raw: list[bytes] = await redis.lrange(keys.stack(run_id), 0, -1)  # type: ignore[misc]
    return [key.decode() for key in raw]


async def run_memo(redis: RedisClient, run_id: str) -> dict[str, bytes]:
    """The run's memo hash as stored: step key -> msgpack bytes."""
    raw: dict[bytes, bytes] = await redis.hgetall(keys.memo(run_id))  # type: ignore[misc]
    return {key.decode(): value for key, value in raw.items()}


async def run_statuses(redis: RedisClient, run_ids: Sequence[str]) -> dict[str, str]:
    """Each run's status, read in one round trip ('' for a run that does not exist)."""
    async with redis.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hget(keys.run(run_id), "status")
        raw = await pipe.execute()
    return {run_id: (s.decode() if s is not None else "") for run_id, s in zip(run_ids, raw, strict=True)}


async def wait_for_runs(
    redis: RedisClient, run_ids: Sequence[str], statuses: Sequence[str] = TERMINAL, timeout: float = 60.0
) -> None:
    """Poll many runs until every one's status is one of ``statuses``; fail naming the laggards."""
    deadline = time.monotonic() + timeout
    while True:
        found = await run_statuses(redis, run_ids)
        behind = {run_id: s for run_id, s in found.items() if s not in statuses}
        if not behind:
            return
        if time.monotonic() > deadline:
            sample = dict(list(behind.items())[:5])
            raise AssertionError(f"{len(behind)} of {len(run_ids)} runs did not reach {statuses}: {sample}")
        await asyncio.sleep(0.05)


async def start_runs(
    sender: stepq.Client, redis: RedisClient, function: str, events: Sequence[stepq.Event], batch: int = 100
) -> list[str]:
    """Send events in batches; return the id of the single run of ``function`` each started, in order."""
    event_ids: list[str] = []
    for i in range(0, len(events), batch):
        event_ids += await sender.send(list(events[i : i + batch]))
    by_event: dict[str, list[str]] = {}
    for view in await runs_of(redis, function, limit=len(events) + 100):
        for event_id in view.event_ids:
            by_event.setdefault(event_id, []).append(view.run_id)
    run_ids = []
    for event_id in event_ids:
        found = by_event.get(event_id, [])
        assert len(found) == 1, f"event {event_id} started {len(found)} runs of {function}, expected 1"
        run_ids.append(found[0])
    return run_ids


async def queued_jobs(redis: RedisClient, app_id: str, run_id: str) -> list[str]:
    """The ids of the run's jobs waiting in its app's queue (due now or later).

    A job a worker is running right now is left out: arq keeps it in the queue until it returns.
    """
    queue = keys.queue(shards.shard_of(run_id), app_id)
    members: list[bytes] = await redis.zrange(queue, 0, -1)
    ours = [m.decode() for m in members if m.decode().startswith(run_id + ":")]
    running = [await redis.exists(keys.in_progress(job_id)) for job_id in ours]
    idle = [job_id for job_id, busy in zip(ours, running, strict=True) if not busy]
    # A job that finished between the two reads has left the queue by now: only count those still in it.
    return [job_id for job_id in idle if await redis.zscore(queue, job_id) is not None]


def all_logs(workers: Sequence[WorkerProcess]) -> list[dict[str, Any]]:
    """The structured log lines of several workers, concatenated."""
    return [entry for worker in workers for entry in worker.logs()]


async def use_shards(redis: RedisClient, count: int) -> None:
    """Make the test database a Redis of ``count`` shards (``keys.SHARD_COUNT``: processes that open
    it use them) and use them in this process too. Set it before starting workers; the ``redis``
    fixture puts this process back to 1 shard for the next test. On a cluster (the cluster pass of a
    ``both_deployments`` file) nothing: a cluster has its 32 shards, whatever the test emulates."""
    if isinstance(redis, RedisCluster):
        return
    await redis.set(keys.SHARD_COUNT, count)
    shards.configure(count)
