"""stepq under the least-privilege ACL users that deploy/redis/stepq-acl.sh writes.

A Redis loads the ACL file the script makes from password files. Workers log in as ``stepq-worker``
(the password from ``STEPQ_REDIS_PASSWORD_FILE``), the API and its dashboard as ``stepq-api``, and an
app sends events straight to Redis as ``stepq-sender``: runs with steps, sleeps, waits resolved by
the sender's events, flow control (idempotency, throttle, a keyed concurrency limit, debounce),
cancellations by event and through the API. Every run ends as it should, and Redis's ACL LOG stays
empty: no command of any role was refused. Then each role tries what it must not do, and is refused.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError

import stepq
from stepq.runtime import keys, shards
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.connection import close, connect, open_redis
from stepq.runtime.queries import get_run
from tests.cluster import LocalCluster
from tests.helpers import ROOT, run_ids_for_event, runs_of, wait_for_runs
from tests.managed_workload import ManagedWorker, Workload
from tests.redis_servers import RedisServer, skip_or_fail
from tests.test_cluster import check_outcomes, create_runs, start_workers

SCRIPT = ROOT / "deploy" / "redis" / "stepq-acl.sh"
ROLES = ("worker", "api", "sender", "admin")


@dataclass
class AclRedis:
    server: RedisServer
    passwords: dict[str, Path]

    def url(self, role: str, *, inline: bool = True) -> str:
        """The role's URL, with its password in it (``inline``) or not (it comes from a file)."""
        base = f"redis://127.0.0.1:{self.server.port}/0"
        return role_url(base, role, self.passwords) if inline else base.replace("//", f"//stepq-{role}@", 1)


def make_acl_file(directory: Path, roles: tuple[str, ...] = ROLES) -> tuple[Path, dict[str, Path]]:
    """Run deploy/redis/stepq-acl.sh with a password file per role; the ACL file and the files."""
    if shutil.which("sh") is None or shutil.which("sha256sum") is None:
        skip_or_fail("deploy/redis/stepq-acl.sh needs sh and sha256sum")
    passwords = {}
    env = {"PATH": "/usr/bin:/bin"}
    for role in roles:
        path = directory / f"{role}.password"
        # surrounding whitespace is not part of a password, for the script as for stepq
        path.write_text(f"  {role}-S3cret/{time.time_ns()}\n")
        passwords[role] = path
        env[f"STEPQ_{role.upper()}_PASSWORD_FILE"] = str(path)
    made = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert made.returncode == 0, made.stderr
    acl = directory / "users.acl"
    acl.write_text(made.stdout)
    return acl, passwords


def role_url(base: str, role: str, passwords: dict[str, Path]) -> str:
    """``base`` (``redis://host:port/db``) with the role's user and password."""
    secret = quote(passwords[role].read_text().strip(), safe="")
    return base.replace("redis://", f"redis://stepq-{role}:{secret}@", 1)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    acl, passwords = make_acl_file(tmp_path)
    server = RedisServer(tmp_path, "redis-acl", [f"aclfile {acl}"])
    server.start()
    try:
        yield AclRedis(server, passwords)
    finally:
        server.stop()


async def test_every_role_does_its_job_under_its_acl_user_and_nothing_is_refused(
    acl_redis: AclRedis, tmp_path: Path
) -> None:
    worker_env = {
        "STEPQ_REDIS_URL": acl_redis.url("worker", inline=False),
        "STEPQ_REDIS_PASSWORD_FILE": str(acl_redis.passwords["worker"]),
    }
    admin = connect(acl_redis.url("admin"))
    sender = stepq.Client("t-managed-sender", redis_url=acl_redis.url("sender"))
    api = ApiServer(acl_redis.url("api"), settings=ApiSettings.from_env(dev=True)).start()
    workers = [ManagedWorker(i, tmp_path, worker_env) for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        # Steps, sleeps and waits (the sender's replies resolve them).
        workload = Workload(sender, admin, chains=20, waits=10, pause_s=0.05)
        try:
            await workload.start()
        except NoPermissionError as exc:
            refused = await admin.execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
            raise AssertionError(f"refused: {_describe(refused)}") from exc
        # Flow control on the sender's path; half the long sleepers are cancelled by an event the
        # sender sends, the other half through the API.
        orders = [
            stepq.Event(name="test/managed.guarded", data={"order": f"o{i}", "group": f"g{i % 2}", "sleep": 60_000})
            for i in range(8)
        ]
        guarded_ids = [await _only_run(sender, admin, "guarded", event) for event in orders]
        duplicate = await _only_run(sender, admin, "guarded", orders[0])  # idempotency: the same order
        skipped = await get_run(admin, duplicate)
        assert skipped is not None and skipped.status == "skipped", skipped
        quick = await _only_run(sender, admin, "guarded", stepq.Event(name="test/managed.guarded", data={"order": "q"}))
        for n in range(5):
            await sender.send(stepq.Event(name="test/managed.debounced", data={"k": "same", "n": n}))
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            # Events through the API, and the dashboard's and the API's reads.
            posted = await http.post("/e/any", json={"name": "test/managed.chain", "data": {"n": 100}})
            assert posted.status_code == 200, posted.text
            for page in ("/v0/runs", "/v0/functions", "/v0/events", "/ui/runs", f"/v0/runs/{quick}"):
                answer = await http.get(page)
                assert answer.status_code == 200, (page, answer.status_code, answer.text[:500])
            await asyncio.sleep(0.5)  # the sleepers are asleep
            for run_id in guarded_ids[4:]:
                cancelled = await http.post(f"/v0/runs/{run_id}/cancel", json={"reason": "by the API"})
                assert cancelled.status_code == 200, cancelled.text
        await sender.send([stepq.Event(name="test/managed.cancel", data={"order": f"o{i}"}) for i in range(4)])

        await workload.finish(timeout=60)
        await workload.check()
        await wait_for_runs(admin, [*guarded_ids, quick], timeout=30)
        for run_id in guarded_ids:
            view = await get_run(admin, run_id)
            assert view is not None and view.status == "cancelled", view
        view = await get_run(admin, quick)
        assert view is not None and (view.status, view.output) == ("completed", {"order": "shipped q"}), view
        debounced = await _wait_for_function(admin, "debounced")
        assert debounced == [{"last": 4}], debounced
        posted_runs = await _wait_for_function(admin, "chain", where=lambda out: out["n"] == 100)
        assert posted_runs == [{"n": 100, "values": [101, 202, 205]}]

        refused = await admin.execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
        assert refused == [], _describe(refused)
        for worker in workers:
            assert worker.alive(), worker.stderr()[-3000:]
            errors = [e for e in worker.logs() if e.get("event") in ("redis.error", "job.internal_error")]
            assert errors == [], errors
    finally:
        api.stop()
        await sender.aclose()
        await admin.aclose()
        for worker in workers:
            worker.stop()


#: What no role may do (against stepq's keys, or anyone's).
FORBIDDEN_TO_ALL: list[tuple[Any, ...]] = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("CONFIG", "GET", "*"),
    ("SAVE",),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("SWAPDB", "0", "1"),
    ("SHUTDOWN", "NOSAVE"),
    ("ACL", "LIST"),
    ("SCRIPT", "FLUSH"),
    ("FUNCTION", "LIST"),
    ("SUBSCRIBE", "anything"),
    ("GET", "sessions:1"),  # another application's key
    ("SET", "sessions:1", "x"),
]


async def test_each_role_is_refused_what_it_must_not_do(acl_redis: AclRedis) -> None:
    admin = connect(acl_redis.url("admin"))
    run_id = "01M8P9DYTX60H1T6S3GCDV6RC0"
    await admin.hset(keys.memo(run_id), "k", "secret step output")  # type: ignore[misc]
    forbidden: dict[str, list[tuple[Any, ...]]] = {
        "worker": FORBIDDEN_TO_ALL,
        "api": [*FORBIDDEN_TO_ALL, ("BLPOP", keys.ready(0, "t-managed"), "0.01")],
        "sender": [*FORBIDDEN_TO_ALL, ("BLPOP", keys.ready(0, "t-managed"), "0.01")],
    }
    try:
        for role, commands in forbidden.items():
            client = connect(acl_redis.url(role))
            try:
                for command in commands:
                    with pytest.raises(NoPermissionError):
                        await client.execute_command(*command)  # type: ignore[no-untyped-call]
                # ...and what it needs works
                assert await client.ping()
                assert await client.hgetall(f"{keys.REGISTRY}:functions") == {}  # type: ignore[misc]
            finally:
                await client.aclose()
        assert await admin.hget(keys.memo(run_id), "k") == b"secret step output"  # type: ignore[misc]
        worker = connect(acl_redis.url("worker"))
        try:
            assert await worker.hgetall(keys.memo(run_id)) == {b"k": b"secret step output"}  # type: ignore[misc]
            assert await worker.blpop([keys.ready(0, "t-managed")], 1) is None  # type: ignore[misc]
        finally:
            await worker.aclose()
        wrong = connect(f"redis://stepq-worker:wrong@127.0.0.1:{acl_redis.server.port}/0")
        try:
            with pytest.raises(AuthenticationError):
                await wrong.ping()
        finally:
            await wrong.aclose()
    finally:
        await admin.aclose()


async def _only_run(sender: stepq.Client, reader: Redis, function: str, event: stepq.Event) -> str:
    [event_id] = await sender.send(event)
    [run_id] = await run_ids_for_event(reader, function, event_id)
    return run_id


async def _wait_for_function(reader: Redis, function: str, where: Any = None, timeout: float = 30) -> list[Any]:
    """The outputs of the function's completed runs (those ``where`` accepts), once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        views = await runs_of(reader, function)
        outputs = [v.output for v in views if v.status == "completed" and (where is None or where(v.output))]
        if outputs and all(v.status in ("completed", "failed", "cancelled") for v in views):
            return outputs
        assert time.monotonic() < deadline, [(v.run_id, v.status) for v in views]
        await asyncio.sleep(0.1)


def _describe(entries: list[Any]) -> list[dict[bytes, Any]]:
    """The ACL LOG's entries, reduced to what to add to the ACL: who, which command, which key."""
    out = []
    for entry in entries:
        fields = dict(zip(entry[::2], entry[1::2], strict=False)) if isinstance(entry, list) else entry
        out.append({k: fields.get(k) for k in (b"username", b"reason", b"object", b"context", b"count")})
    return out


async def test_the_acl_users_work_on_a_redis_cluster(tmp_path: Path) -> None:
    """On a Redis Cluster the clients also ask for the slot map (CLUSTER SLOTS), the command table
    (COMMAND) and follow ASK redirections (ASKING): workers and the API do their job as their users,
    and no node's ACL LOG has an entry. (The default user stays on here: the test forms the cluster.)"""
    acl, passwords = make_acl_file(tmp_path, ("worker", "api"))
    with LocalCluster(tmp_path / "cluster", node_options=("--aclfile", str(acl))) as cluster:
        api = await open_redis(role_url(cluster.url, "api", passwords))
        workers = start_workers(tmp_path, role_url(cluster.url, "worker", passwords), 2)
        try:
            assert isinstance(api, RedisCluster)
            log = tmp_path / "steps.log"
            created = await create_runs(api, 32, log)
            await check_outcomes(api, created, log)
            for node in cluster.nodes:
                plain = Redis(port=node.port)
                try:
                    refused = await plain.execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
                finally:
                    await plain.aclose()
                assert refused == [], (node.port, _describe(refused))
        finally:
            for worker in workers:
                worker.stop()
            await close(api)
            shards.configure(1)
