"""Where workers may send requests (``stepq.runtime.app_urls``): the pure checks, then the HTTP invoker
refusing to connect, against a real loopback app that counts the requests it gets."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stepq.engine import FunctionFailed, FunctionReturned
from stepq.event import Event
from stepq.replay import ExecutionRequest
from stepq.runtime.app_urls import (
    AllowedHosts,
    AppUrlPolicy,
    AppUrlRefused,
    IPAddress,
    check_address,
    check_name,
    forbidden_reason,
    host_and_port,
    is_redis,
)
from stepq.workers.http_invoker import HttpInvoker
from stepq.workers.remote import RemoteFunction


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure metadata
        "169.254.0.1",
        "fe80::1",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "fd00:ec2::254",  # AWS metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
    ],
)
def test_addresses_no_app_may_live_at(address: str) -> None:
    assert forbidden_reason(ip(address)) is not None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.1.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.10", "fd12::1", "8.8.8.8"]
)
def test_loopback_private_and_public_addresses_are_allowed_by_default(address: str) -> None:
    assert forbidden_reason(ip(address)) is None
    assert check_address(ip(address), 8000, host=address, allowed=None) is None


def test_the_redis_server_is_refused_on_its_port_only() -> None:
    redis = [(ip("127.0.0.1"), 6379)]
    assert is_redis(ip("127.0.0.1"), 6379, redis)
    assert is_redis(ip("::1"), 6379, redis)  # loopback reaches loopback
    assert is_redis(ip("127.0.0.2"), 6379, redis)
    assert not is_redis(ip("127.0.0.1"), 6380, redis)
    assert not is_redis(ip("10.0.0.5"), 6379, redis)
    reason = check_address(ip("127.0.0.1"), 6379, host="localhost", allowed=None, redis=redis)
    assert reason is not None and "Redis" in reason
    remote = [(ip("10.0.0.5"), 6379)]
    assert is_redis(ip("10.0.0.5"), 6379, remote) and not is_redis(ip("127.0.0.1"), 6379, remote)


def test_metadata_names_are_refused_before_resolving() -> None:
    for name in ("metadata.google.internal", "METADATA.google.internal.", "metadata", "instance-data"):
        assert check_name(name, allowed=None) is not None, name
    assert check_name("app.example.com", allowed=None) is None


def test_the_allow_list_holds_names_and_networks() -> None:
    allowed = AllowedHosts.parse(" apps.internal , 10.20.0.0/16, 192.168.1.7, fd00:1::/64 ,")
    assert allowed is not None
    assert allowed.names == frozenset({"apps.internal"})
    assert [str(n) for n in allowed.networks] == ["10.20.0.0/16", "192.168.1.7/32", "fd00:1::/64"]
    assert check_address(ip("10.20.3.4"), 80, host="x.example", allowed=allowed) is None
    assert check_address(ip("192.168.1.7"), 80, host="192.168.1.7", allowed=allowed) is None
    assert check_address(ip("127.0.0.1"), 80, host="APPS.internal", allowed=allowed) is None  # listed by name
    refused = check_address(ip("10.21.0.1"), 80, host="x.example", allowed=allowed)
    assert refused is not None and "STEPQ_ALLOWED_APP_HOSTS" in refused
    # The built-in refusals hold even for a host the list names.
    assert check_address(ip("169.254.169.254"), 80, host="apps.internal", allowed=allowed) is not None
    assert check_name("other.internal", allowed=AllowedHosts.parse("apps.internal")) is not None
    assert AllowedHosts.parse("") is None and AllowedHosts.parse(" , ") is None


@pytest.mark.parametrize("entry", ["http://apps.internal", "10.0.0.0/33", "apps.internal:8000", "a b"])
def test_a_malformed_allow_list_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match="STEPQ_ALLOWED_APP_HOSTS"):
        AllowedHosts.parse(f"10.0.0.0/8,{entry}")


def test_urls_give_their_host_and_port() -> None:
    assert host_and_port("http://[::1]:8000/x") == ("::1", 8000)
    assert host_and_port("https://app.example.com/api") == ("app.example.com", 443)
    assert host_and_port("http://app.example.com/api") == ("app.example.com", 80)
    with pytest.raises(AppUrlRefused):
        host_and_port("http://app:99999/")


def resolver_for(table: dict[str, list[str]]) -> Any:
    """A resolver answering from ``table``: stands in for DNS answers the test cannot change."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [ip(a) for a in table[host]]

    return resolve


async def test_a_policy_resolves_and_checks_every_address() -> None:
    policy = AppUrlPolicy(
        redis_url="redis://db.internal:6379/0",
        resolver=resolver_for(
            {"db.internal": ["10.0.0.5"], "ok.test": ["10.0.0.9"], "sneaky.test": ["10.0.0.9", "169.254.169.254"]}
        ),
    )
    assert await policy.check("http://ok.test:8000/api") == [ip("10.0.0.9")]
    with pytest.raises(AppUrlRefused, match="link-local"):
        await policy.check("http://sneaky.test/api")
    with pytest.raises(AppUrlRefused, match="Redis"):
        await policy.check("http://10.0.0.5:6379/")
    assert await policy.check("http://unknown.test/") == []  # checked again when a worker connects
    strict = AppUrlPolicy(allowed=AllowedHosts.parse("10.0.0.0/24"), resolver=policy.resolver)
    with pytest.raises(AppUrlRefused, match="does not resolve"):
        await strict.check("http://unknown.test/")


# -- the invoker ------------------------------------------------------------------------------------------


class CountingApp:
    """A loopback app answering every call as an SDK would, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

        async def call(request: Request) -> JSONResponse:
            self.calls += 1
            return JSONResponse({"ok": True}, headers={"x-inngest-sdk": "py:v0.5.0"})

        self.app = Starlette(routes=[Route("/api/inngest", call, methods=["POST"])])


@pytest.fixture
def counting_app() -> Iterator[tuple[CountingApp, int]]:
    app = CountingApp()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app.app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield app, port
    server.should_exit = True
    thread.join(10)
    sock.close()


def remote(url: str) -> RemoteFunction:
    return RemoteFunction.from_config({"id": "app-f", "fn_id": "f", "app_id": "app", "retries": 2, "url": url})


def request() -> ExecutionRequest:
    event = Event(name="app/go", data={}, id="e1", ts=1)
    return ExecutionRequest(event=event, events=[event], steps={}, run_id="01RUN")


async def test_the_invoker_calls_an_allowed_app(counting_app: tuple[CountingApp, int]) -> None:
    app, port = counting_app
    invoker = HttpInvoker(url_policy=AppUrlPolicy(redis_url="redis://127.0.0.1:6379/0"))
    try:
        result = await invoker.invoke(remote(f"http://localhost:{port}/api/inngest"), request())
    finally:
        await invoker.aclose()
    assert isinstance(result, FunctionReturned), result
    assert app.calls == 1


async def test_the_invoker_refuses_an_app_outside_the_allow_list_without_sending(
    counting_app: tuple[CountingApp, int],
) -> None:
    app, port = counting_app
    invoker = HttpInvoker(url_policy=AppUrlPolicy(allowed=AllowedHosts.parse("10.0.0.0/8")))
    try:
        result = await invoker.invoke(remote(f"http://127.0.0.1:{port}/api/inngest"), request())
    finally:
        await invoker.aclose()
    assert isinstance(result, FunctionFailed) and not result.retriable, result
    assert result.error["name"] == "AppUrlRefused" and "STEPQ_ALLOWED_APP_HOSTS" in result.error["message"]
    assert app.calls == 0


async def test_the_invoker_checks_the_address_dns_gives_at_call_time() -> None:
    """A name that resolved to an allowed address at registration and to the metadata service now."""
    policy = AppUrlPolicy(resolver=resolver_for({"app.test": ["169.254.169.254"]}))
    invoker = HttpInvoker(url_policy=policy)
    began = time.monotonic()
    try:
        result = await invoker.invoke(remote("http://app.test:8000/api/inngest"), request())
    finally:
        await invoker.aclose()
    assert isinstance(result, FunctionFailed) and not result.retriable, result
    assert result.error["name"] == "AppUrlRefused" and "169.254.169.254" in result.error["message"]
    assert time.monotonic() - began < 5  # refused, not a connection attempt timing out


async def test_the_redis_a_policy_guards_is_every_sentinel_of_a_sentinel_url_and_a_tls_server() -> None:
    resolve = resolver_for({"s1.internal": ["10.0.0.11"], "s2.internal": ["10.0.0.12"], "db.internal": ["10.0.0.5"]})
    sentinel = AppUrlPolicy(redis_url="redis+sentinel://:pw@s1.internal:26379,s2.internal/main/0", resolver=resolve)
    for address in ("10.0.0.11:26379", "10.0.0.12:26379"):
        with pytest.raises(AppUrlRefused, match="Redis"):
            await sentinel.check(f"http://{address}/")
    assert await sentinel.check("http://10.0.0.11:8000/") == [ip("10.0.0.11")]  # another port of that host
    tls = AppUrlPolicy(redis_url="rediss://db.internal:6380/0?ssl_cert_reqs=none", resolver=resolve)
    with pytest.raises(AppUrlRefused, match="Redis"):
        await tls.check("http://10.0.0.5:6380/")
