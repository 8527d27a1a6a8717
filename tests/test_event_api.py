"""The HTTP event API (``stepq api``) and the SDK's HTTP transport, against real Redis and workers.

The main API runs as a ``stepq api`` subprocess with configured keys; variants (dev mode, small
limits, a flaky proxy in front) run in-process under uvicorn in a thread (``stepq.runtime.api.ApiServer``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import stepq
from stepq.http_transport import (
    EventApiUnavailableError,
    EventKeyError,
    EventRejectedError,
    HttpTransport,
    PreparedSend,
)
from stepq.runtime import keys, shards
from stepq.runtime.api import MAX_EVENTS, ApiServer, ApiSettings
from stepq.runtime.codec import unpack
from stepq.runtime.queries import RunView, list_runs
from stepq.signing import bearer
from tests.helpers import REDIS_URL, ROOT, STEPQ_CLI, TERMINAL, Deployment, StartWorkers

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = pytest.mark.both_deployments

KEY = "test-key-1"
OTHER_KEY = "test-key-2"
SIGNING_KEY = "signkey-test-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
EVENT = "api-test/echo"
APP = "event_api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"stepq api exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"stepq api did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory, deployment: Deployment) -> Iterator[str]:
    """``stepq api`` in a subprocess, with two configured keys (not dev mode), on the test Redis (the
    single one, then the cluster: one process per deployment)."""
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    env = {k: v for k, v in os.environ.items() if k not in ("STEPQ_DEV", "STEPQ_MAX_EVENT_BYTES")}
    env.update({"STEPQ_EVENT_KEYS": f"{KEY}, {OTHER_KEY}", "STEPQ_SIGNING_KEY": SIGNING_KEY, "PYTHONUNBUFFERED": "1"})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*STEPQ_CLI, "api", "--port", str(port), "--redis-url", deployment.url],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def echo(n: int, **extra: Any) -> dict[str, Any]:
    return {"name": EVENT, "data": {"n": n}, **extra}


async def echo_runs(redis: Redis) -> list[RunView]:
    """Every run of echo, once each (``list_runs`` reads the active index, then the finished one,
    so a run that finishes between the two reads can appear in both)."""
    by_id = {view.run_id: view for view in await list_runs(redis, function="echo", limit=10_000)}
    return list(by_id.values())


async def wait_for_echo_runs(redis: Redis, count: int, timeout: float = 60.0) -> list[RunView]:
    """Wait until ``count`` runs of echo exist and all have finished; fail if more appear."""
    deadline = time.monotonic() + timeout
    runs: list[RunView] = []
    while time.monotonic() < deadline:
        runs = await echo_runs(redis)
        assert len(runs) <= count, f"{len(runs)} runs of echo, expected {count}"
        if len(runs) == count and all(r.status in TERMINAL for r in runs):
            return runs
        await asyncio.sleep(0.05)
    statuses = sorted(r.status for r in runs)
    raise AssertionError(f"expected {count} finished runs of echo within {timeout} s, have {statuses}")


async def sent_events(redis: Redis) -> list[dict[str, Any]]:
    """The stored events named ``EVENT`` (the runtime may store events of its own, e.g. on run ends)."""
    ids = [i.decode() for shard in shards.shards() for i in await redis.zrange(keys.events_index(shard), 0, -1)]
    async with redis.pipeline(transaction=False) as pipe:  # (events of several shards: not one MGET)
        for event_id in ids:
            pipe.get(keys.event(event_id))
        blobs = await pipe.execute()
    events = [unpack(blob) for blob in blobs if blob is not None]
    return [e for e in events if e.get("name") == EVENT]


async def assert_nothing_stored(redis: Redis) -> None:
    assert await sent_events(redis) == []
    stored = [await redis.get(key) async for key in redis.scan_iter(match=f"{keys.PREFIX}:{{*}}:event:*")]
    assert [e for e in map(unpack, filter(None, stored)) if e.get("name") == EVENT] == []
    assert await echo_runs(redis) == []


async def stored_event(redis: Redis, event_id: str) -> dict[str, Any]:
    blob = await redis.get(keys.event(event_id))
    assert blob is not None, f"event {event_id} is not stored"
    event: dict[str, Any] = unpack(blob)
    return event


# -- the endpoint ------------------------------------------------------------------------------------


async def test_a_list_of_100_events_gets_100_ids_and_starts_100_runs(
    redis: Redis, api_url: str, http: httpx.AsyncClient, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    response = await http.post(f"{api_url}/e/{KEY}", json=[echo(i) for i in range(100)])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == 200
    assert len(body["ids"]) == 100 and len(set(body["ids"])) == 100

    runs = await wait_for_echo_runs(redis, 100)
    assert all(r.status == "completed" for r in runs)
    assert sorted(r.output["doubled"] for r in runs) == [2 * i for i in range(100)]
    assert len(await sent_events(redis)) == 100


async def test_a_single_event_object_and_the_second_key_are_accepted(
    redis: Redis, api_url: str, http: httpx.AsyncClient, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    response = await http.post(f"{api_url}/e/{OTHER_KEY}", json=echo(21, id="order-21"))
    assert response.status_code == 200, response.text
    [event_id] = response.json()["ids"]
    assert (await stored_event(redis, event_id))["id"] == "order-21"
    [run] = await wait_for_echo_runs(redis, 1)
    assert run.output == {"n": 21, "doubled": 42, "event_id": "order-21"}


async def test_a_wrong_key_is_refused_with_401(redis: Redis, api_url: str, http: httpx.AsyncClient) -> None:
    for key in ("wrong", KEY + "x", "test-key"):
        response = await http.post(f"{api_url}/e/{key}", json=echo(1))
        assert response.status_code == 401, (key, response.text)
        assert response.json()["status"] == 401
        assert response.json()["ids"] == []
    await assert_nothing_stored(redis)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"this is not json", "body"),
        (b'{"name": "api-test/echo", "data": {', "body"),
        (b'"just a string"', "body"),
        (b"[]", "body"),
        (json.dumps({"data": {"n": 1}}).encode(), "event.name"),
        (json.dumps([echo(0), {"data": {"n": 1}}]).encode(), "events[1].name"),
        (json.dumps([echo(0), echo(1), {"name": EVENT, "data": [1, 2]}]).encode(), "events[2].data"),
        (json.dumps({"name": EVENT, "data": "text"}).encode(), "event.data"),
        (json.dumps([echo(0), {"name": EVENT, "ts": "yesterday"}]).encode(), "events[1].ts"),
        (json.dumps([echo(0), 7]).encode(), "events[1]"),
        (json.dumps({"name": EVENT, "colour": "red"}).encode(), "colour"),
        (b'{"name": "api-test/echo", "data": {"x": NaN}}', "body"),
    ],
)
async def test_a_malformed_body_is_refused_with_400_naming_the_field_and_nothing_is_stored(
    redis: Redis,
    api_url: str,
    http: httpx.AsyncClient,
    body: bytes,
    field: str,
) -> None:
    response = await http.post(f"{api_url}/e/{KEY}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["status"] == 400 and answer["ids"] == []
    assert field in answer["error"], answer["error"]
    await assert_nothing_stored(redis)


async def test_a_bad_event_in_a_list_stores_none_of_the_good_ones(
    redis: Redis, api_url: str, http: httpx.AsyncClient, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    batch = [echo(i) for i in range(10)] + [{"name": EVENT, "data": None, "user": 3}]
    response = await http.post(f"{api_url}/e/{KEY}", json=batch)
    assert response.status_code == 400, response.text
    assert "events[10].user" in response.json()["error"]
    await asyncio.sleep(0.3)
    await assert_nothing_stored(redis)


@pytest.mark.parametrize("name", ["inngest/function.finished", "stepq/anything"])
async def test_reserved_names_are_refused_with_400(
    redis: Redis, api_url: str, http: httpx.AsyncClient, name: str
) -> None:
    response = await http.post(f"{api_url}/e/{KEY}", json=[echo(0), {"name": name, "data": {}}])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "events[1].name" in error and "reserved" in error
    await assert_nothing_stored(redis)


async def test_more_than_5000_events_are_refused_with_400(redis: Redis, api_url: str, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{api_url}/e/{KEY}", json=[{"name": EVENT}] * (MAX_EVENTS + 1))
    assert response.status_code == 400, response.text
    assert "5000" in response.json()["error"]
    await assert_nothing_stored(redis)


async def test_an_event_over_512_kib_is_refused_with_413(redis: Redis, api_url: str, http: httpx.AsyncClient) -> None:
    big = {"name": EVENT, "data": {"blob": "x" * (512 * 1024)}}
    response = await http.post(f"{api_url}/e/{KEY}", json=[echo(0), big])
    assert response.status_code == 413, response.text
    assert response.json()["status"] == 413
    assert "events[1]" in response.json()["error"]
    await assert_nothing_stored(redis)

    just_under = {"name": EVENT, "data": {"blob": "x" * (500 * 1024)}}
    response = await http.post(f"{api_url}/e/{KEY}", json=just_under)
    assert response.status_code == 200, response.text


async def test_health_and_run_lookup(
    redis: Redis, api_url: str, http: httpx.AsyncClient, start_workers: StartWorkers
) -> None:
    health = await http.get(f"{api_url}/health")
    assert health.status_code == 200 and health.json()["redis"] == "ok"

    start_workers(APP)
    response = await http.post(f"{api_url}/e/{KEY}", json=echo(5))
    assert response.status_code == 200, response.text
    [run] = await wait_for_echo_runs(redis, 1)

    # Reading a run's output needs the signing key, as Inngest's API does; event keys only send.
    auth = {"authorization": bearer(SIGNING_KEY)}
    found = await http.get(f"{api_url}/v0/runs/{run.run_id}", headers=auth)
    assert found.status_code == 200, found.text
    view = found.json()
    assert view["run_id"] == run.run_id and view["status"] == "completed"
    assert view["output"]["doubled"] == 10
    assert [s["name"] for s in view["steps"]] == ["double"]

    with_event_key = await http.get(f"{api_url}/v0/runs/{run.run_id}", headers={"authorization": f"Bearer {KEY}"})
    assert with_event_key.status_code == 401, with_event_key.text
    assert "event key" in with_event_key.json()["error"] and "doubled" not in with_event_key.text
    assert (await http.get(f"{api_url}/v0/runs/{run.run_id}")).status_code == 401
    wrong = {"authorization": "Bearer nope"}
    assert (await http.get(f"{api_url}/v0/runs/{run.run_id}", headers=wrong)).status_code == 401
    assert (await http.get(f"{api_url}/v0/runs/01NOSUCHRUN", headers=auth)).status_code == 404


# -- configuration (in-process servers) ---------------------------------------------------------------


async def test_dev_mode_accepts_any_key(redis: Redis, http: httpx.AsyncClient) -> None:
    with ApiServer(REDIS_URL, settings=ApiSettings(dev=True)) as server:
        for key in ("anything", "NO_EVENT_KEY_SET"):
            response = await http.post(f"{server.url}/e/{key}", json=echo(1))
            assert response.status_code == 200, response.text
        # Dev mode needs no key for run lookups either.
        assert (await http.get(f"{server.url}/v0/runs/unknown")).status_code == 404
    assert len(await sent_events(redis)) == 2


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPQ_EVENT_KEYS", " a, b ,,c ")
    monkeypatch.setenv("STEPQ_MAX_EVENT_BYTES", "2048")
    monkeypatch.delenv("STEPQ_DEV", raising=False)
    settings = ApiSettings.from_env()
    assert settings.event_keys == ("a", "b", "c")
    assert settings.max_event_bytes == 2048
    assert not settings.dev
    assert ApiSettings.from_env(dev=True).dev
    monkeypatch.setenv("STEPQ_DEV", "1")
    assert ApiSettings.from_env().dev
    monkeypatch.setenv("STEPQ_MAX_EVENT_BYTES", "lots")
    with pytest.raises(ValueError, match="STEPQ_MAX_EVENT_BYTES"):
        ApiSettings.from_env()


def test_without_keys_and_outside_dev_mode_the_api_does_not_start() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("STEPQ_DEV", "STEPQ_EVENT_KEYS")}
    done = subprocess.run(
        [*STEPQ_CLI, "api", "--port", str(free_port()), "--redis-url", REDIS_URL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "STEPQ_EVENT_KEYS" in done.stderr and "--dev" in done.stderr


async def test_the_event_size_limit_is_configurable(redis: Redis, http: httpx.AsyncClient) -> None:
    settings = ApiSettings(event_keys=(KEY,), max_event_bytes=1000, max_request_bytes=50_000)
    with ApiServer(REDIS_URL, settings=settings) as server:
        small = {"name": EVENT, "data": {"blob": "x" * 800}}
        large = {"name": EVENT, "data": {"blob": "x" * 1200}}
        assert (await http.post(f"{server.url}/e/{KEY}", json=[small, small])).status_code == 200
        refused = await http.post(f"{server.url}/e/{KEY}", json=[small, large])
        assert refused.status_code == 413 and "events[1]" in refused.json()["error"]
        # A body over the request cap is refused before it is parsed.
        too_long = await http.post(f"{server.url}/e/{KEY}", json=[small] * 60)
        assert too_long.status_code == 413 and "50000" in too_long.json()["error"]
    assert len(await sent_events(redis)) == 2


# -- the SDK client over HTTP ----------------------------------------------------------------------


async def test_the_sdk_client_sends_over_http_and_the_run_completes(
    redis: Redis, api_url: str, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    client = stepq.Client("t-http-sender", event_api_url=api_url, event_key=KEY)
    try:
        ids = await client.send(stepq.Event(name=EVENT, data={"n": 4}))
        [run] = await wait_for_echo_runs(redis, 1)
        assert run.status == "completed" and run.output["doubled"] == 8
        # The client gave the event an idempotency key; the run saw it.
        stored = await stored_event(redis, ids[0])
        assert stored["id"] and run.output["event_id"] == stored["id"]

        sync_ids = await asyncio.to_thread(client.send_sync, [stepq.Event(name=EVENT, data={"n": i}) for i in (1, 2)])
        assert len(sync_ids) == 2
        await wait_for_echo_runs(redis, 3)
    finally:
        await client.aclose()


async def test_the_sdk_client_raises_clear_errors_for_4xx(redis: Redis, api_url: str) -> None:
    wrong = stepq.Client("t-http-sender", event_api_url=api_url, event_key="wrong")
    right = stepq.Client("t-http-sender", event_api_url=api_url, event_key=KEY)
    try:
        with pytest.raises(EventKeyError) as refused:
            await wrong.send(stepq.Event(name=EVENT))
        assert refused.value.status == 401
        with pytest.raises(stepq.InvalidEventError, match=r"events\[1\]\.name.*reserved") as rejected:
            await right.send([stepq.Event(name=EVENT), stepq.Event(name="inngest/x")])
        assert isinstance(rejected.value, EventRejectedError) and rejected.value.status == 400
    finally:
        await wrong.aclose()
        await right.aclose()
    await assert_nothing_stored(redis)


def test_the_client_reads_the_event_api_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPQ_EVENT_API_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("STEPQ_EVENT_KEY", "k")
    client = stepq.Client("t-env")
    transport = client.transport
    assert isinstance(transport, HttpTransport) and transport.endpoint == "http://127.0.0.1:1/e/k"
    with pytest.raises(stepq.FunctionConfigError, match="event_api_url"):
        stepq.Client("t-env", event_api_url="127.0.0.1:8288")


# -- retries create no duplicate runs ----------------------------------------------------------------


class FlakyProxy:
    """Forwards ``POST /e/{key}`` to the API, then answers 502 (or hangs) for the first ``failures``."""

    def __init__(self, upstream: str, failures: int, mode: str = "502") -> None:
        self.upstream = upstream
        self.failures = failures
        self.mode = mode
        self.forwarded = 0
        self.app = Starlette(routes=[Route("/e/{key}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        async with httpx.AsyncClient(timeout=30) as client:
            upstream = await client.post(
                f"{self.upstream}/e/{request.path_params['key']}",
                content=body,
                headers={"content-type": "application/json"},
            )
        self.forwarded += 1
        if self.forwarded <= self.failures:
            if self.mode == "hang":
                await asyncio.sleep(3)
            return Response("bad gateway", status_code=502)
        return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")


async def test_a_retried_send_after_a_502_creates_no_duplicate_runs(
    redis: Redis, api_url: str, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    proxy = FlakyProxy(api_url, failures=1)
    with ApiServer(REDIS_URL, app=proxy.app) as server:
        transport = HttpTransport(server.url, KEY, backoff_s=0.01)
        client = stepq.Client("t-http-sender", transport=transport)
        try:
            batch = [stepq.Event(name=EVENT, data={"n": 1}), stepq.Event(name=EVENT, data={"n": 2}, id="mine")]
            ids = await client.send(batch)
        finally:
            await client.aclose()
    assert proxy.forwarded == 2 and len(ids) == 2
    # Both attempts stored the events (as Inngest's event store does), but each started its runs once.
    assert len(await sent_events(redis)) == 4
    runs = await wait_for_echo_runs(redis, 2)
    await asyncio.sleep(0.5)
    assert len(await echo_runs(redis)) == 2
    assert sorted(r.output["n"] for r in runs) == [1, 2]


async def test_a_send_whose_answer_times_out_is_retried_without_duplicate_runs(
    redis: Redis, api_url: str, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    proxy = FlakyProxy(api_url, failures=1, mode="hang")
    with ApiServer(REDIS_URL, app=proxy.app) as server:
        transport = HttpTransport(server.url, KEY, timeout=1.0, backoff_s=0.01)
        try:
            ids = await asyncio.to_thread(transport.send_sync, [stepq.Event(name=EVENT, data={"n": 7}).validated()])
        finally:
            await transport.aclose()
    assert proxy.forwarded == 2 and len(ids) == 1
    [run] = await wait_for_echo_runs(redis, 1)
    await asyncio.sleep(0.5)
    assert len(await echo_runs(redis)) == 1 and run.output["doubled"] == 14


async def test_when_every_attempt_fails_the_error_is_clear_and_runs_are_still_not_duplicated(
    redis: Redis, api_url: str, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    proxy = FlakyProxy(api_url, failures=100)
    with ApiServer(REDIS_URL, app=proxy.app) as server:
        transport = HttpTransport(server.url, KEY, backoff_s=0.01)
        try:
            with pytest.raises(EventApiUnavailableError, match="after 3 attempt"):
                await transport.send([stepq.Event(name=EVENT, data={"n": 3}).validated()])
        finally:
            await transport.aclose()
    assert proxy.forwarded == 3
    assert len(await sent_events(redis)) == 3
    await wait_for_echo_runs(redis, 1)
    await asyncio.sleep(0.5)
    assert len(await echo_runs(redis)) == 1


async def test_a_4xx_answer_is_not_retried(redis: Redis, api_url: str) -> None:
    proxy = FlakyProxy(api_url, failures=0)
    with ApiServer(REDIS_URL, app=proxy.app) as server:
        transport = HttpTransport(server.url, KEY, backoff_s=0.01)
        try:
            with pytest.raises(EventRejectedError):
                await transport.send([stepq.Event(name="stepq/nope").validated()])
        finally:
            await transport.aclose()
    assert proxy.forwarded == 1


async def test_posting_the_same_prepared_send_twice_starts_each_function_once(
    redis: Redis, api_url: str, start_workers: StartWorkers
) -> None:
    start_workers(APP)
    transport = HttpTransport(api_url, KEY)
    try:
        prepared = PreparedSend([stepq.Event(name=EVENT, data={"n": i}).validated() for i in range(5)])
        first = await transport.attempt(prepared)
        second = await transport.attempt(prepared)
    finally:
        await transport.aclose()
    assert len(first) == len(second) == 5 and set(first).isdisjoint(second)
    runs = await wait_for_echo_runs(redis, 5)
    await asyncio.sleep(0.5)
    assert len(await echo_runs(redis)) == 5
    assert sorted(r.output["n"] for r in runs) == list(range(5))
    # Each pair of stored copies carries the same idempotency key.
    first_keys = [(await stored_event(redis, a))["id"] for a in first]
    assert first_keys == [(await stored_event(redis, b))["id"] for b in second]
