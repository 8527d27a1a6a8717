"""A worker's own health endpoint (``--health-port``): ``/livez`` and ``/readyz`` of real worker
processes, on a private Redis the tests start late, stop and start again.

- ready only once the worker registered its app: a worker started before its Redis answers says
  ``starting`` (and is alive meanwhile), then ready;
- not ready while its Redis is down (``redis_unreachable``), ready again once it is back;
- not ready while draining after SIGTERM, with a step still in flight that then finishes;
- not live while its event loop is stuck in blocking code, live again after;
- SIGUSR1 logs what every task (each running step's) awaits, and the worker goes on;
- the endpoint also serves ``/metrics``; one port only: a health port and a different metrics
  port are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import stepq
from stepq.runtime import keys
from stepq.runtime.connection import connect
from stepq.workers.embedded import EmbeddedRedis, free_port
from stepq.workers.endpoint import DEFAULT_HOST, EndpointAddress, endpoint_address
from tests.helpers import STEPQ_CLI, LoggedProcess, WorkerProcess, start_run, wait_for_run

APP = "t-health"


class HealthWorker(WorkerProcess):
    """``stepq worker tests.apps.health_app:client --health-port N`` on ``redis_url``."""

    def __init__(self, directory: Path, redis_url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        argv = [*STEPQ_CLI, "worker", "tests.apps.health_app:client", "--health-port", str(self.port)]
        full_env = {**os.environ, "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", "STEPQ_REDIS_URL": redis_url}
        # The watchdog's defaults (a probe a second, 1.5 s timeout) are what production runs with.
        self.app = "health_app"
        LoggedProcess.__init__(self, "worker-health", argv, directory, {**full_env, **(env or {})})

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5.0)
        return response.status_code, response.json()

    def wait_for(
        self, path: str, check: Callable[[int, dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll ``path`` until ``check(status, body)``; the last answer otherwise fails the test."""
        deadline = time.monotonic() + timeout
        last: tuple[int, dict[str, Any]] | str = "no answer"
        while time.monotonic() < deadline:
            assert self.alive(), f"the worker exited with {self.proc.returncode}:\n{self.stderr()}"
            try:
                last = self.get(path)
            except httpx.TransportError as exc:  # the endpoint is not listening yet
                last = repr(exc)
            else:
                if check(*last):
                    return last[1]
            time.sleep(0.05)
        raise AssertionError(f"{path} never passed the check within {timeout} s; last answer {last}:\n{self.stderr()}")


def ready(status: int, body: dict[str, Any]) -> bool:
    return status == 200 and body == {"ready": True}


def not_ready(reason: str) -> Callable[[int, dict[str, Any]], bool]:
    def check(status: int, body: dict[str, Any]) -> bool:
        return status == 503 and body.get("ready") is False and body.get("reason") == reason

    return check


def live(status: int, body: dict[str, Any]) -> bool:
    return status == 200 and body.get("live") is True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private Redis (AOF on, fixed port and data directory, so that it can stop and start again);
    not started: each test starts it when it needs."""
    redis = EmbeddedRedis(port=free_port(), appendonly=True, data_dir=str(tmp_path / "redis"))
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., HealthWorker]]:
    started: list[HealthWorker] = []

    def start(redis_url: str, env: dict[str, str] | None = None) -> HealthWorker:
        worker = HealthWorker(tmp_path, redis_url, env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


async def test_ready_only_once_registered_and_alive_while_waiting_for_redis(
    server: EmbeddedRedis, workers: Callable[..., HealthWorker]
) -> None:
    # its Redis is not running yet; waiting for it is no reason to be restarted: the heartbeat runs
    worker = workers(server.url, env={"STEPQ_LIVENESS_TIMEOUT": "1"})
    body = worker.wait_for("/readyz", not_ready("starting"))
    assert "registered" in body["detail"]
    worker.wait_for("/livez", live)
    time.sleep(2.5)  # longer than the liveness timeout
    assert live(*worker.get("/livez"))
    assert not_ready("starting")(*worker.get("/readyz"))
    assert not any(e.get("event") == "worker.started" for e in worker.logs())

    server.start()
    worker.wait_for("/readyz", ready)
    # ready means registered: an event sent now starts a run, which this worker runs
    redis = connect(server.url)
    try:
        assert await redis.hexists(keys.FUNCTIONS, f"{APP}-block")  # type: ignore[misc]
        sender = stepq.Client("t-health-sender", redis_url=server.url)
        run_id = await start_run(sender, redis, "block", "health/block", {"seconds": 0})
        assert (await wait_for_run(redis, run_id)).status == "completed"
    finally:
        await redis.aclose()
    response = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=5.0)
    status, scraped = response.status_code, response.text
    assert status == 200 and f'stepq_steps_started_total{{function="{APP}-block"}} 1.0' in scraped


async def test_not_ready_while_redis_is_unreachable(
    server: EmbeddedRedis, workers: Callable[..., HealthWorker]
) -> None:
    server.start()
    worker = workers(server.url)
    worker.wait_for("/readyz", ready)

    server.stop()
    body = worker.wait_for("/readyz", not_ready("redis_unreachable"))
    assert "Redis" in body["detail"]
    assert live(*worker.get("/livez"))  # unreachable Redis is no reason to restart the worker

    server.start()
    worker.wait_for("/readyz", ready)
    assert any(e.get("event") == "redis.unreachable" for e in worker.logs())


async def hold_a_step(server: EmbeddedRedis, redis: Any, worker: HealthWorker, tmp_path: Path) -> tuple[str, Path]:
    """Start a run of ``hold`` and wait until its step runs: (its run id, the file that releases it)."""
    sender = stepq.Client("t-health-sender", redis_url=server.url)
    started, release = tmp_path / "started", tmp_path / "release"
    run_id = await start_run(sender, redis, "hold", "health/hold", {"started": str(started), "release": str(release)})
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, worker.stderr()
        await asyncio.sleep(0.02)
    return run_id, release


@contextlib.asynccontextmanager
async def held_step(
    server: EmbeddedRedis, workers: Callable[..., HealthWorker], tmp_path: Path
) -> AsyncIterator[tuple[HealthWorker, Any, str, Path]]:
    """A ready worker holding a step of ``hold``: (the worker, a client, the run's id, the file that
    releases the step)."""
    server.start()
    worker = workers(server.url)
    worker.wait_for("/readyz", ready)
    redis = connect(server.url)
    try:
        run_id, release = await hold_a_step(server, redis, worker, tmp_path)
        yield worker, redis, run_id, release
    finally:
        await redis.aclose()


async def test_draining_worker_is_not_ready_and_finishes_its_step(
    server: EmbeddedRedis, workers: Callable[..., HealthWorker], tmp_path: Path
) -> None:
    async with held_step(server, workers, tmp_path) as (worker, redis, run_id, release):
        worker.proc.send_signal(signal.SIGTERM)
        body = worker.wait_for("/readyz", not_ready("draining"))
        assert "SIGTERM" in body["detail"]
        assert live(*worker.get("/livez"))  # draining is alive: it is finishing its step
        assert worker.alive()
        assert (await wait_for_run(redis, run_id, statuses=("running",), timeout=5)).status == "running"

        release.touch()
        assert worker.proc.wait(timeout=30) == 0
        view = await wait_for_run(redis, run_id)
        assert view.status == "completed", view
        assert view.output == "released"


async def test_sigusr1_logs_where_each_running_step_waits(
    server: EmbeddedRedis, workers: Callable[..., HealthWorker], tmp_path: Path
) -> None:
    """An operator's view of a worker that holds jobs: ``kill -USR1`` logs every task's await chain,
    the job's down to the step's own coroutine, and the worker goes on (the step then finishes)."""
    async with held_step(server, workers, tmp_path) as (worker, redis, run_id, release):
        worker.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not (dumps := [e for e in worker.logs() if e.get("event") == "worker.tasks"]):
            assert time.monotonic() < deadline, worker.stderr()
            await asyncio.sleep(0.05)
        [dump] = dumps
        chains = [" <- ".join(chain) for chain in dump["tasks"].values()]
        assert any("wait_for_release" in chain and "health_app.py" in chain for chain in chains), dump
        assert any(name.startswith("stepq-job:") for name in dump["tasks"]), dump
        assert dump["count"] == len(dump["tasks"])

        release.touch()
        view = await wait_for_run(redis, run_id)
        assert view.status == "completed" and view.output == "released", view


async def test_stuck_event_loop_is_not_live_then_live_again(
    server: EmbeddedRedis, workers: Callable[..., HealthWorker]
) -> None:
    server.start()
    worker = workers(server.url, env={"STEPQ_LIVENESS_TIMEOUT": "1"})
    worker.wait_for("/livez", live)
    worker.wait_for("/readyz", ready)
    redis = connect(server.url)
    try:
        sender = stepq.Client("t-health-sender", redis_url=server.url)
        # the function's body blocks the worker's event loop for 6 s: the heartbeat stops
        run_id = await start_run(sender, redis, "block", "health/block", {"seconds": 6})
        body = worker.wait_for("/livez", lambda status, body: status == 503)
        assert body["live"] is False and body["heartbeat_age_s"] > 1 and body["timeout_s"] == 1
        worker.wait_for("/livez", live)
        assert (await wait_for_run(redis, run_id)).status == "completed"
    finally:
        await redis.aclose()


def test_one_endpoint_one_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("STEPQ_HEALTH_PORT", "STEPQ_HEALTH_HOST", "STEPQ_METRICS_PORT", "STEPQ_METRICS_HOST"):
        monkeypatch.delenv(variable, raising=False)
    assert endpoint_address() is None
    assert endpoint_address(health_port=8081) == EndpointAddress(DEFAULT_HOST, 8081)
    assert endpoint_address(metrics_port=9100, metrics_host="0.0.0.0") == EndpointAddress("0.0.0.0", 9100)
    assert endpoint_address(health_port=8081, metrics_port=8081) == EndpointAddress(DEFAULT_HOST, 8081)
    monkeypatch.setenv("STEPQ_HEALTH_PORT", "8082")
    monkeypatch.setenv("STEPQ_HEALTH_HOST", "0.0.0.0")
    assert endpoint_address() == EndpointAddress("0.0.0.0", 8082)
    assert endpoint_address(health_port=8083) == EndpointAddress("0.0.0.0", 8083)  # the command line wins
    with pytest.raises(ValueError, match=r"health port \(8082\) and the metrics port \(9100\) differ"):
        endpoint_address(metrics_port=9100)
    with pytest.raises(ValueError, match="health host and the metrics host differ"):
        endpoint_address(metrics_host="127.0.0.1")
    monkeypatch.setenv("STEPQ_HEALTH_PORT", "eighty")
    with pytest.raises(ValueError, match="STEPQ_HEALTH_PORT must be a port number, got 'eighty'"):
        endpoint_address()

    # the command refuses it before it starts anything
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPQ_HEALTH", "STEPQ_METRICS"))}
    argv = [*STEPQ_CLI, "worker", "tests.apps.health_app:client", "--health-port", "8081", "--metrics-port", "9100"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "the health port (8081) and the metrics port (9100) differ" in done.stderr


def test_unknown_path_is_404_and_head_has_no_body(server: EmbeddedRedis, workers: Callable[..., HealthWorker]) -> None:
    worker = workers(server.url)  # no Redis needed to answer
    worker.wait_for("/livez", live)
    response = httpx.get(f"http://127.0.0.1:{worker.port}/healthz", timeout=5.0)
    assert response.status_code == 404 and "/readyz" in response.json()["error"]
    head = httpx.head(f"http://127.0.0.1:{worker.port}/readyz", timeout=5.0)
    assert head.status_code == 503 and head.content == b""
