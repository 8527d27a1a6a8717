"""Where workers may send requests: the hosts an app registered over HTTP may live on.

An app registers the URL of its functions, and workers then POST signed requests there with run
data. Without a check, anyone allowed to register (anyone, in dev mode) could point workers at the
cloud metadata service (``169.254.169.254``: instance credentials), at other link-local addresses,
or at the Redis server itself. So, by default, a URL is refused when its host is or resolves to:

- a link-local address (``169.254.0.0/16``, ``fe80::/10``), where metadata services live, or a
  known metadata address elsewhere (``fd00:ec2::254``, ``100.100.100.200``, ``192.0.0.192``), or a
  metadata host name (``metadata.google.internal``...);
- an unspecified, multicast or broadcast address (``0.0.0.0``, ``::``): no app lives there;
- the Redis server the API or worker uses (same address and port; any loopback address counts as
  Redis's own when Redis is on loopback).

Loopback and private networks stay allowed: an app on ``localhost`` is the development norm, and
apps on a private network are the production norm. ``STEPQ_ALLOWED_APP_HOSTS`` (comma-separated
host names and networks, e.g. ``apps.internal,10.20.0.0/16``) restricts apps to those when set: a
URL's host must be one of the names, or every address it resolves to must lie in one of the
networks. The refusals above apply even then.

The check runs at registration (the API answers 400 naming the URL) and again whenever a worker
connects, on the address it is about to connect to (DNS may change after registration), through
``CheckedNetworkBackend``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlparse

import httpcore

from stepq.redis_config import RedisConfigError, redis_url_from_env

from .redis_urls import parse_redis_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``host -> addresses``; the default asks the system resolver (``getaddrinfo``).
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

ENV = "STEPQ_ALLOWED_APP_HOSTS"

#: Metadata services outside the link-local ranges: AWS over IPv6, Alibaba Cloud, Oracle Cloud.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "192.0.0.192"))
#: Names of metadata services (they resolve to link-local addresses where they resolve at all).
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)
#: How long a host name may take to resolve before the check gives up on it.
RESOLVE_TIMEOUT_S = 10.0
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host": Linux connects 0.x.x.x to itself
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AppUrlRefused(Exception):
    """An app URL (or the address it resolves to) that workers must not call; ``reason`` says why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url} is refused: {reason}")
        self.url = url
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class AllowedHosts:
    """``STEPQ_ALLOWED_APP_HOSTS``: host names (matched exactly, case-insensitively) and networks."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowedHosts | None:
        """None for an empty setting (no restriction); ValueError naming an entry that is neither a
        host name nor an address or network."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = _normal_name(entry)
            if "/" in entry or not name or any(c in name for c in " :@[]?#"):
                raise ValueError(f"{ENV}: {entry!r} is neither a host name nor an address or network (10.0.0.0/8)")
            names.add(name)
        if not names and not networks:
            return None
        return cls(frozenset(names), tuple(networks))

    def __str__(self) -> str:
        return ", ".join([*sorted(self.names), *(str(n) for n in self.networks)])


def forbidden_reason(address: IPAddress) -> str | None:
    """Why no app may live at ``address`` whatever the settings, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return forbidden_reason(embedded)
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata service"
    if address.is_link_local:
        return f"{address} is a link-local address (cloud metadata services live there)"
    if address.is_unspecified or address in _THIS_NETWORK:
        return f"{address} is an unspecified address"
    if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        return f"{address} is not a unicast address"
    return None


def is_redis(address: IPAddress, port: int, redis: Sequence[tuple[IPAddress, int]]) -> bool:
    """Whether ``address:port`` reaches the Redis server at one of ``redis``' addresses."""
    for redis_address, redis_port in redis:
        if port != redis_port:
            continue
        if address == redis_address or (address.is_loopback and redis_address.is_loopback):
            return True
    return False


def check_address(
    address: IPAddress,
    port: int,
    *,
    host: str,
    allowed: AllowedHosts | None,
    redis: Sequence[tuple[IPAddress, int]] = (),
) -> str | None:
    """Why workers must not connect to ``address:port`` for a URL naming ``host``, or None. Pure."""
    reason = forbidden_reason(address)
    if reason is not None:
        return reason
    if is_redis(address, port, redis):
        return f"{address}:{port} is the Redis server stepq uses"
    listed = allowed is None or _normal_name(host) in allowed.names
    if allowed is not None and not listed and not any(address in network for network in allowed.networks):
        return f"{address} is not among the hosts {ENV} allows ({allowed})"
    return None


def check_name(host: str, *, allowed: AllowedHosts | None) -> str | None:
    """Why a URL's host name is refused before it is even resolved, or None. Pure."""
    name = _normal_name(host)
    if name in METADATA_NAMES:
        return f"{name} is a cloud metadata service"
    if allowed is not None and name not in allowed.names and not allowed.networks:
        return f"{name} is not among the hosts {ENV} allows ({allowed})"
    return None


def host_and_port(url: str) -> tuple[str, int]:
    """The host (IPv6 without brackets) and port (the scheme's default when absent) of an http(s) URL."""
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AppUrlRefused(url, "not an http(s) URL with a host")
    try:
        port = parts.port
    except ValueError:
        raise AppUrlRefused(url, "its port is not a number from 1 to 65535") from None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses ``getaddrinfo`` gives for ``host``, in its order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone
        if address not in out:
            out.append(address)
    return out


def _redis_endpoints(url: str) -> list[tuple[str, int]]:
    """The hosts and ports ``url`` names: the server's, or a Sentinel URL's sentinels (the masters
    they name are not known before asking); none for a unix socket or a URL that does not parse."""
    try:
        target = parse_redis_url(url, environ={})
    except RedisConfigError:
        return []
    if target.is_sentinel:
        return list(target.sentinels)
    host = target.connection.get("host")
    return [(host, int(target.connection.get("port", 6379)))] if target.tcp and host else []


class AppUrlPolicy:
    """The check, with what it needs: the allow-list, the Redis server's address, a resolver."""

    def __init__(
        self,
        *,
        allowed: AllowedHosts | None = None,
        redis_url: str | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allowed = allowed
        self.redis_url = redis_url
        self.resolver = resolver
        self._redis: list[tuple[IPAddress, int]] | None = None

    @classmethod
    def from_env(cls, redis_url: str | None = None) -> AppUrlPolicy:
        """``STEPQ_ALLOWED_APP_HOSTS``, and the Redis at ``redis_url`` (default: ``STEPQ_REDIS_URL``)."""
        return cls(
            allowed=AllowedHosts.parse(os.environ.get(ENV, "")),
            redis_url=redis_url or redis_url_from_env(),
        )

    async def redis_addresses(self) -> list[tuple[IPAddress, int]]:
        """Where the Redis server is (resolved once; a unix socket or an unresolvable name: nowhere)."""
        if self._redis is None:
            found: list[tuple[IPAddress, int]] = []
            for host, port in _redis_endpoints(self.redis_url or ""):
                try:
                    found += [(a, port) for a in await self._resolve(host, port)]
                except (OSError, ValueError, UnicodeError):
                    continue
            self._redis = found
        return self._redis

    async def check(self, url: str, *, timeout: float = RESOLVE_TIMEOUT_S) -> list[IPAddress]:
        """The addresses ``url``'s host resolves to, every one allowed; else ``AppUrlRefused``.

        A host that does not resolve is refused only when it must be found in an allow-list of
        networks; otherwise it is let through, to be checked (or to fail) when a worker connects.
        """
        host, port = host_and_port(url)
        self.check_name(host, url=url)
        try:
            addresses = await asyncio.wait_for(self.resolve(host, port), timeout)
        except (OSError, UnicodeError, ValueError, TimeoutError) as exc:
            if self.allowed is not None and _normal_name(host) not in self.allowed.names:
                raise AppUrlRefused(url, f"{host} does not resolve ({type(exc).__name__})") from None
            return []
        await self.check_addresses(host, port, addresses, url=url)
        return addresses

    def check_name(self, host: str, *, url: str) -> None:
        """``AppUrlRefused`` for a host refused by its name alone."""
        reason = check_name(host, allowed=self.allowed)
        if reason is not None:
            raise AppUrlRefused(url, reason)

    async def check_addresses(self, host: str, port: int, addresses: Sequence[IPAddress], *, url: str) -> None:
        """``AppUrlRefused`` unless every one of the addresses ``host`` resolved to is allowed."""
        redis = await self.redis_addresses()
        for address in addresses:
            reason = check_address(address, port, host=host, allowed=self.allowed, redis=redis)
            if reason is not None:
                raise AppUrlRefused(url, reason)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """``host`` as an address, or the addresses it resolves to (OSError when none)."""
        return await self._resolve(host, port)

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        addresses = await self.resolver(host, port)
        if not addresses:
            raise OSError(f"no address for {host}")
        return addresses


class CheckedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the check in front of every new connection: the host is
    resolved, every address checked, and the connection made to a checked address (never resolved
    again by the system), so a DNS answer that changed after registration cannot get past it.
    TLS still verifies the certificate against the URL's host name (httpcore passes it as SNI)."""

    def __init__(self, policy: AppUrlPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        url = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.policy.check_name(host, url=url)
        try:
            addresses = await asyncio.wait_for(self.policy.resolve(host, port), timeout or RESOLVE_TIMEOUT_S)
        except (OSError, UnicodeError, ValueError, TimeoutError) as exc:  # worth retrying: DNS may be back
            raise httpcore.ConnectError(f"{host} does not resolve ({type(exc).__name__}: {exc})") from None
        await self.policy.check_addresses(host, port, addresses, url=url)
        error: Exception | None = None
        for address in addresses:  # in the resolver's order, as a plain connect would try them
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host}: no address to connect to")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise AppUrlRefused(path, "apps are called over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _normal_name(host: str) -> str:
    return host.strip().lower().rstrip(".")
