"""Workers that never die or go deaf: poison queue entries, Redis error replies, a link that goes
dark without a reset, and a Redis that comes back empty.

Each test runs real worker processes against a real Redis (the test database, a private
``EmbeddedRedis`` where the test reconfigures or restarts the server, or the test database behind a
``BlackHoleProxy``), and checks that the worker process stays alive and goes on serving.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

import stepq
from stepq.runtime import keys
from stepq.runtime.connection import connect
from stepq.workers.embedded import EmbeddedRedis, free_port
from tests.apps.restart import expected_values
from tests.blackhole import BlackHoleProxy
from tests.helpers import (
    REDIS_URL,
    ROOT,
    STEPQ_CLI,
    StartWorkers,
    WorkerOn,
    WorkerProcess,
    read_lines,
    run_ids_for_event,
    start_run,
    start_runs,
    wait_for_run,
    wait_for_runs,
)


def stepq_cli(*args: str, url: str = REDIS_URL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPQ_CLI, *args, "--redis-url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def logged(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    return [entry for entry in worker.logs() if entry.get("event") == event]


def log_time(entry: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Wait for ``check``; returns the seconds it took."""
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


def assert_alive(worker: WorkerProcess) -> None:
    assert worker.alive(), f"the worker exited with {worker.proc.returncode}:\n{worker.stderr()[-4000:]}"


# -- item 6: poison queue entries ----------------------------------------------------------------


async def test_poison_queue_members_go_to_the_dead_letters_and_the_worker_keeps_serving(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("cli_app")
    queue = keys.queue(0, "t-cli")
    now_ms = int(time.time() * 1000)
    not_utf8, minus_inf, bad_job = b"\xff\xfe-not-utf8", b"minus-inf", b"job-key-is-a-hash-0"
    await redis.hset(keys.job(bad_job.decode()), "not", "a job")  # type: ignore[misc]
    await redis.zadd(queue, {not_utf8: now_ms, minus_inf: float("-inf"), bad_job: now_ms})

    async def moved_aside() -> bool:
        assert_alive(worker)
        left: list[bytes] = await redis.zrange(queue, 0, -1)
        return not {not_utf8, minus_inf, bad_job} & set(left)

    await wait_until(moved_aside, 10, "the poison entries leaving the queue")
    assert_alive(worker)

    # A run started afterwards is served by the same process.
    run_id = await start_run(sender, redis, "greet", "test/greet", {"who": "ada"})
    view = await wait_for_run(redis, run_id)
    assert (view.status, view.output) == ("completed", "hello ada")
    assert_alive(worker)

    listed = stepq_cli("dead-letters", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = {base64.b64decode(r["member_b64"]): r for r in map(json.loads, listed.stdout.splitlines())}
    assert set(letters) == {not_utf8, minus_inf, bad_job}
    assert letters[not_utf8]["reason"] == "queue member is not UTF-8"
    assert letters[not_utf8]["member"] == "\\xff\\xfe-not-utf8"
    assert letters[minus_inf]["score"] == "-inf"
    assert letters[minus_inf]["reason"] == "score is not a finite number"
    assert letters[bad_job]["reason"] == f"its job key {keys.job(bad_job.decode())} holds a hash, not a string"
    assert all(r["queue"] == queue and r["at_ms"] >= now_ms for r in letters.values())
    assert await redis.exists(keys.in_progress(bad_job.decode())) == 0  # its claim was let go

    table = stepq_cli("dead-letters")
    assert table.returncode == 0, table.stderr
    assert "\\xff\\xfe-not-utf8" in table.stdout and "score is not a finite number" in table.stdout

    # Logged once each, not at every poll.
    lines = Counter(e["member"] for e in logged(worker, "queue.dead_letter"))
    assert lines == {"\\xff\\xfe-not-utf8": 1, "minus-inf": 1, bad_job.decode(): 1}, lines


async def test_a_queue_key_of_the_wrong_type_is_renamed_aside_and_the_worker_serves_a_fresh_queue(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("cli_app")
    queue = keys.queue(0, "t-cli")
    await redis.delete(queue)
    await redis.hset(queue, mapping={"someone": "wrote a hash here"})  # type: ignore[misc]

    async def renamed() -> bool:
        assert_alive(worker)
        return bool(await redis.type(queue) != b"hash")

    await wait_until(renamed, 10, "the wrong-typed queue key being renamed aside")
    assert_alive(worker)
    [letter] = [json.loads(line) for line in stepq_cli("dead-letters", "--json").stdout.splitlines()]
    assert (letter["queue"], letter["type"], letter["reason"]) == (queue, "hash", "queue key is not a sorted set")
    assert letter["moved_to"].startswith(keys.dead_queue(0, "t-cli", 0).removesuffix("0"))
    assert await redis.hgetall(letter["moved_to"]) == {b"someone": b"wrote a hash here"}  # type: ignore[misc]
    assert len(logged(worker, "queue.moved_aside")) == 1

    run_id = await start_run(sender, redis, "greet", "test/greet", {"who": "bob"})
    view = await wait_for_run(redis, run_id)
    assert (view.status, view.output) == ("completed", "hello bob")
    assert_alive(worker)


# -- item 7: Redis error replies -----------------------------------------------------------------


#: The longest an injected outage waits for the worker to meet it: a backoff (up to 5 s) plus an
#: idle check (4 s) and some slack for a loaded machine.
OUTAGE_S = 12.0


class BusyScript:
    """A Lua script that loops (read-only, so SCRIPT KILL can end it): Redis answers BUSY meanwhile."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = sync_redis.Redis.from_url(self.url)
        try:
            client.eval("while true do end", 0)
        except ResponseError as exc:  # "script killed by user"
            self.error = exc
        finally:
            client.close()

    def __enter__(self) -> BusyScript:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        client = sync_redis.Redis.from_url(self.url)
        try:
            client.script_kill()
        finally:
            client.close()
        self._thread.join(10)


async def test_redis_error_replies_do_not_end_the_worker_and_every_run_completes(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    url = private_redis.url
    # Few slots, so that due jobs wait in the queue and every outage meets claims; a short lease, so
    # that a job whose end arq could not record runs again soon.
    worker = WorkerOn("restart", tmp_path, url, {"STEPQ_CONCURRENCY": "4", "STEPQ_LEASE": "2"})
    redis = connect(url)
    client = stepq.Client("t-faults-sender", redis_url=url)
    try:
        worker.wait_ready()
        log = tmp_path / "executions.log"
        events = [stepq.Event(name="test/six-steps", data={"n": n, "log": str(log)}) for n in range(20)]
        run_ids = await start_runs(client, redis, "six-steps", events)
        await asyncio.sleep(0.4)  # runs between steps and inside them

        # Each outage lasts until the worker met it (at least 1.5 s, at most OUTAGE_S): a worker
        # backing off after the previous one, or idle between checks, sends nothing for a while.
        async def met(kind: str) -> None:
            await asyncio.sleep(1.5)
            deadline = time.monotonic() + OUTAGE_S
            while time.monotonic() < deadline and kind not in {e.get("kind") for e in logged(worker, "redis.error")}:
                assert_alive(worker)
                await asyncio.sleep(0.1)
            assert_alive(worker)

        # OOM: maxmemory below what is used, nothing may be evicted.
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", "1")
        await met("OOM")
        await redis.config_set("maxmemory", "0")
        await asyncio.sleep(0.5)

        # READONLY: a replica of a master that does not answer keeps its data and refuses writes.
        await redis.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # type: ignore[no-untyped-call]
        await met("READONLY")
        await redis.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
        await asyncio.sleep(0.5)

        # BUSY: a script runs past busy-reply-threshold; every other command is refused.
        await redis.config_set("busy-reply-threshold", "100")
        with BusyScript(url) as busy:
            await met("BUSY")
        assert busy.error is not None and "killed" in str(busy.error).lower(), busy.error
        healthy = time.time()

        await wait_for_runs(redis, run_ids, timeout=90)
        for n, run_id in enumerate(run_ids):
            view = await wait_for_run(redis, run_id, timeout=1)
            assert (view.status, view.output) == ("completed", {"n": n, "values": expected_values(n)}), view
        assert_alive(worker)

        kinds = Counter(e.get("kind") for e in logged(worker, "redis.error"))
        print(f"\nredis.error lines by kind: {dict(kinds)}; all runs done {time.time() - healthy:.1f} s after")
        assert {"OOM", "READONLY", "BUSY"} <= set(kinds), kinds
        # Once per kind per activity per outage, not once per poll (a poll every 5 ms for 1.5 s).
        assert all(count <= 10 for count in kinds.values()), kinds
        assert len(read_lines(log)) >= 20 * 6
    finally:
        await client.aclose()
        await redis.aclose()
        worker.stop()


# -- item 8: a link that goes dark without a reset -----------------------------------------------


def via(proxy: BlackHoleProxy, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))


async def test_a_worker_cut_off_from_redis_notices_stops_and_resumes_when_redis_answers(
    redis: Redis, sender: stepq.Client, tmp_path: Path
) -> None:
    target = urlsplit(REDIS_URL)
    proxy = BlackHoleProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    worker = WorkerOn("restart", tmp_path, via(proxy, REDIS_URL))
    try:
        worker.wait_ready()
        log = tmp_path / "executions.log"
        before = await start_run(sender, redis, "six-steps", "test/six-steps", {"n": 1, "log": str(log)})

        async def first_step_ran() -> bool:
            return any(line.startswith(before) for line in read_lines(log))

        await wait_until(first_step_ran, 10, "the first step running")
        proxy.black_hole()
        cut = time.time()

        async def noticed() -> bool:
            return bool(logged(worker, "redis.unreachable"))

        noticed_s = await wait_until(noticed, 15, "the worker logging redis.unreachable")
        # A run started while the worker is cut off (straight into Redis): nothing of it runs yet.
        during = await start_run(sender, redis, "six-steps", "test/six-steps", {"n": 2, "log": str(log)})
        await asyncio.sleep(1.0)
        assert not [line for line in read_lines(log) if line.startswith(during)]
        assert_alive(worker)

        proxy.restore()
        restored = time.time()
        for run_id, n in ((before, 1), (during, 2)):
            view = await wait_for_run(redis, run_id, timeout=30)
            assert (view.status, view.output) == ("completed", {"n": n, "values": expected_values(n)}), view
        [back] = logged(worker, "redis.reconnected")
        resumed = min(log_time(e) for e in logged(worker, "invocation") if log_time(e) > restored)
        print(
            f"\nblack-holed for {restored - cut:.1f} s: unreachable logged {noticed_s:.1f} s after the cut, "
            f"reconnected {log_time(back) - restored:.2f} s and first invocation {resumed - restored:.2f} s "
            "after the link returned"
        )
        assert log_time(back) >= restored
        assert_alive(worker)
    finally:
        worker.stop()
        proxy.stop()


# -- item 9: Redis comes back empty --------------------------------------------------------------


async def first_run_of(sender: stepq.Client, redis: Redis, function: str, event: stepq.Event, timeout: float) -> str:
    """Send ``event`` again and again until it starts a run of ``function``; return the run's id."""
    deadline = time.monotonic() + timeout
    while True:
        [event_id] = await sender.send(stepq.Event(name=event.name, data=event.data))
        run_ids = await run_ids_for_event(redis, function, event_id)
        if run_ids:
            return run_ids[0]
        assert time.monotonic() < deadline, f"{event.name} started no run of {function} within {timeout} s"
        await asyncio.sleep(0.2)


async def test_a_flushed_redis_gets_the_apps_functions_back_without_a_worker_restart(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("cli_app")
    await redis.flushdb()
    began = time.monotonic()
    run_id = await first_run_of(sender, redis, "greet", stepq.Event(name="test/greet", data={"who": "eve"}), 10)
    print(f"\na run started {time.monotonic() - began:.2f} s after FLUSHDB")
    view = await wait_for_run(redis, run_id)
    assert (view.status, view.output) == ("completed", "hello eve")
    assert len(logged(worker, "worker.started")) == 1
    assert len(logged(worker, "registration.restored")) == 1
    assert_alive(worker)


async def test_a_redis_restarted_empty_gets_the_apps_functions_back(tmp_path: Path) -> None:
    server = EmbeddedRedis(port=free_port())  # no persistence: a restart empties it
    server.start()
    worker = WorkerOn("cli_app", tmp_path, server.url)
    redis = connect(server.url)
    client = stepq.Client("t-faults-sender", redis_url=server.url)
    try:
        worker.wait_ready()
        server.restart()
        assert await redis.dbsize() == 0
        began = time.monotonic()
        run_id = await first_run_of(client, redis, "greet", stepq.Event(name="test/greet", data={"who": "kim"}), 15)
        print(f"\na run started {time.monotonic() - began:.2f} s after Redis restarted empty")
        view = await wait_for_run(redis, run_id)
        assert (view.status, view.output) == ("completed", "hello kim")
        assert_alive(worker)
    finally:
        await client.aclose()
        await redis.aclose()
        worker.stop()
        server.stop()


async def test_workers_of_two_versions_of_an_app_do_not_take_turns_registering(redis: Redis, tmp_path: Path) -> None:
    """A rolling deploy: the newer version's function set stays registered while older workers
    refresh theirs, and wins again after Redis is emptied."""
    env = {"STEPQ_REGISTRATION_REFRESH": "0.2"}
    old = WorkerOn("deploy_v1", tmp_path, REDIS_URL, env)
    new: WorkerOn | None = None
    try:
        old.wait_ready()
        new = WorkerOn("deploy_v2", tmp_path, REDIS_URL, env)
        new.wait_ready()

        async def newer_set_holds(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                registered = await redis.hkeys(keys.FUNCTIONS)  # type: ignore[misc]
                assert set(registered) == {b"t-deploy-old", b"t-deploy-new"}, registered
                await asyncio.sleep(0.02)

        await newer_set_holds(1.5)
        await redis.flushdb()

        async def restored() -> bool:
            return bool(await redis.hexists(keys.FUNCTIONS, "t-deploy-new"))  # type: ignore[misc]

        await wait_until(restored, 10, "the newer version's functions registered again")
        await asyncio.sleep(0.5)  # the older worker may have restored its own set too: the newer one wins
        await newer_set_holds(1.5)
        assert old.alive() and new.alive()
        assert logged(old, "registration.superseded")
    finally:
        old.stop()
        if new is not None:
            new.stop()


async def test_a_worker_whose_function_id_another_app_owns_exits_at_once_naming_the_owner(
    redis: Redis, tmp_path: Path
) -> None:
    """A function id belongs to the app that registered it: a worker of another app claiming it
    changes nothing and exits with one line saying whose it is (retrying could not help)."""
    from stepq.runtime.registry import Registry

    squatter = {"id": "t-sleeps-nap", "fn_id": "nap", "app_id": "other-app", "name": "nap", "triggers": []}
    await Registry(redis).register_app("other-app", [squatter])
    env = {**os.environ, "STEPQ_REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    argv = [*STEPQ_CLI, "worker", "tests.apps.sleeps:client", "--redis-url", REDIS_URL]

    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2, done.stderr[-3000:]
    assert "belongs to app 'other-app'" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    record = await Registry(redis).get("t-sleeps-nap")
    assert record is not None and record.app_id == "other-app"
