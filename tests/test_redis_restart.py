"""Redis restarts in the middle of 100 runs: the workers ride out the outage and every run completes.

The test runs its own Redis (``EmbeddedRedis`` with AOF, so the data survives as it would a
production restart), stops it while runs are in flight, checks that sending an event during the
outage fails with a clear error instead of hanging, starts it again on the same port and data, and
waits for every run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

import stepq
from stepq.runtime.codec import unpack
from stepq.runtime.connection import connect
from stepq.runtime.queries import RunView
from stepq.workers.embedded import EmbeddedRedis, free_port
from tests.apps.restart import STEPS, expected_values
from tests.helpers import ROOT, STEPQ_CLI, WorkerProcess, read_lines, run_memo, run_stack, runs_of, sha1

RUNS = 100
FUNCTION = "six-steps"


class WorkerAt(WorkerProcess):
    """A ``stepq worker`` subprocess for a test app, on a Redis other than the test database."""

    def __init__(self, app: str, index: int, directory: Path, redis_url: str) -> None:
        self.app = app
        self.stdout_path = directory / f"worker-{app}-{index}.stdout"
        self.stderr_path = directory / f"worker-{app}-{index}.stderr"
        env = {**os.environ, "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", "STEPQ_REDIS_URL": redis_url}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                # 30 steps at once: one worker alone cannot take every run in flight when Redis is
                # back, so both must go on working (what the test checks)
                [*STEPQ_CLI, "worker", f"tests.apps.{app}:client", "--redis-url", redis_url, "--concurrency", "30"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private Redis with AOF on, on a fixed port and data directory so that it can restart."""
    redis = EmbeddedRedis(port=free_port(), appendonly=True, data_dir=str(tmp_path / "redis"))
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def started_after(worker: WorkerProcess, moment: float, event: str = "invocation") -> int:
    """How many ``event`` lines the worker logged after ``moment`` (a Unix time)."""
    count = 0
    for entry in worker.logs():
        if entry.get("event") == event:
            at = dt.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            count += at > moment
    return count


def unavailable_lines(worker: WorkerProcess, moment: float) -> list[str]:
    return [
        f"{e['timestamp']} {e.get('error')} retry_in_s={e.get('retry_in_s')}"
        for e in worker.logs()
        if e.get("event") == "redis.unavailable"
        and dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp() > moment
    ]


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


async def test_workers_ride_out_a_redis_restart_and_all_100_runs_complete(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    workers = [WorkerAt("restart", i, tmp_path, server.url) for i in range(2)]
    redis: Redis = connect(server.url)
    client = stepq.Client("t-restart-sender", redis_url=server.url)
    try:
        for worker in workers:
            worker.wait_ready()
        log = tmp_path / "executions.log"
        # Runs arrive over about a second and a half and each takes about as long: when Redis stops,
        # some runs are done, most are between steps or inside one, some have not started.
        sent: dict[str, int] = {}
        for batch in range(10):
            events = [
                stepq.Event(name="test/six-steps", data={"n": n, "log": str(log)})
                for n in range(batch * 10, batch * 10 + 10)
            ]
            ids = await client.send(events)
            sent.update(zip(ids, range(batch * 10, batch * 10 + 10), strict=True))
            await asyncio.sleep(0.15)

        async def some_completed() -> bool:
            views = await runs_of(redis, FUNCTION, limit=RUNS * 2)
            return sum(v.status == "completed" for v in views) >= 10

        await wait_until(some_completed, 30, "10 runs completing before the restart")
        before = await runs_of(redis, FUNCTION, limit=RUNS * 2)
        in_flight = sum(v.status not in ("completed", "failed") for v in before)
        server.stop()
        stopped = time.time()

        # During the outage a send fails with a StepqError naming Redis, within redis-py's timeouts.
        began = time.monotonic()
        with pytest.raises(stepq.StepqError) as failure:
            await asyncio.wait_for(client.send(stepq.Event(name="test/six-steps", data={"n": -1, "log": str(log)})), 30)
        send_failed_s = time.monotonic() - began
        assert "redis" in str(failure.value).lower(), str(failure.value)

        await asyncio.sleep(max(0.0, 3.0 - (time.time() - stopped)))  # an outage of at least 3 s
        assert all(w.alive() for w in workers), [w.stderr()[-3000:] for w in workers]
        server.start()

        async def serving() -> bool:
            try:
                return bool(await redis.ping())
            except RedisError:  # "LOADING": see test_embedded_redis_restart_returns_once_it_serves_commands
                return False

        await wait_until(serving, 30, "Redis serving again")
        restarted = time.time()

        async def all_done() -> bool:
            views = await runs_of(redis, FUNCTION, limit=RUNS * 2)
            return len(views) >= RUNS and all(v.status in ("completed", "failed", "cancelled") for v in views)

        try:
            await wait_until(all_done, 90, f"all {RUNS} runs ending after the restart")
        except AssertionError:
            views = await runs_of(redis, FUNCTION, limit=RUNS * 2)
            raise AssertionError(
                f"{len(views)} runs, statuses {Counter(v.status for v in views)}; "
                f"worker logs: {[w.stderr()[-3000:] for w in workers]}"
            ) from None
        finished = time.time()

        final: list[RunView] = await runs_of(redis, FUNCTION, limit=RUNS * 2)
        executions = Counter(tuple(line.split()[:2]) for line in read_lines(log))
        after = [started_after(w, restarted) for w in workers]
        late = [unavailable_lines(w, restarted + 1.0) for w in workers]
        print(
            f"\nRedis down {restarted - stopped:.1f} s with {in_flight} of {RUNS} runs in flight; "
            f"send failed after {send_failed_s:.2f} s: {failure.value}; all runs ended "
            f"{finished - restarted:.1f} s after Redis was back; "
            f"{sum(count - 1 for count in executions.values())} duplicate step executions; "
            f"invocations per worker after the restart: {after}; "
            f"'redis.unavailable' logged later than 1 s after Redis was back: {[len(x) for x in late]}"
        )

        step_keys = [sha1(f"step-{i}") for i in range(1, STEPS + 1)]
        assert len(final) == RUNS  # the failed send started nothing
        inputs = set()
        for view in final:
            assert view.status == "completed", (view.run_id, view.status, view.error)
            [event_id] = view.event_ids
            n = sent[event_id]
            inputs.add(n)
            assert view.output == {"n": n, "values": expected_values(n)}
            assert await run_stack(redis, view.run_id) == step_keys
            memo = {k: unpack(v) for k, v in (await run_memo(redis, view.run_id)).items()}
            assert memo == {key: {"data": value} for key, value in zip(step_keys, expected_values(n), strict=True)}
            for i in range(1, STEPS + 1):
                assert executions[view.run_id, f"step-{i}"] >= 1
        assert inputs == set(range(RUNS))
        # Both workers lived through the outage and went on running steps after it...
        assert all(w.alive() for w in workers)
        assert all(count > 0 for count in after), after
        # ...and once Redis answered again, neither kept reporting it down and backing off (a second
        # of slack for a poll that began before Redis was back).
        assert late == [[] for _ in workers], late
    finally:
        await client.aclose()
        await redis.aclose()
        for worker in workers:
            worker.stop()


def test_embedded_redis_restart_returns_once_it_serves_commands(tmp_path: Path) -> None:
    """``restart`` (like ``start``) returns once the server answers PING, not while it still loads
    its AOF: a caller's next command must not get ``LOADING``."""
    import redis as sync_redis

    with EmbeddedRedis(appendonly=True, data_dir=str(tmp_path / "redis")) as server:
        client = sync_redis.Redis.from_url(server.url)
        try:
            # 100k writes in the AOF: reading them back takes the server a noticeable moment.
            client.eval("for i = 1, 100000 do redis.call('SET', 'k' .. i, 'xxxxxxxxxxxxxxxxxxxxxxxx') end", 0)
        finally:
            client.close()
        server.restart()
        client = sync_redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            assert client.dbsize() == 100_000
        finally:
            client.close()
