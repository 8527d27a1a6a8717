"""The Redis URLs stepq accepts, checked before anything connects, and the connection pools they make.

- ``redis://[user[:password]@]host:port/db`` and ``unix:///path/redis.sock?db=0``, as in redis-py;
- ``rediss://...`` for TLS, with redis-py's own query parameters: ``ssl_ca_certs`` (the CA file to
  trust; default: the system's), ``ssl_certfile`` and ``ssl_keyfile`` (a client certificate, for a
  server started with ``tls-auth-clients yes``), ``ssl_cert_reqs`` (``required``, the default,
  ``optional`` or ``none``) and ``ssl_check_hostname`` (default ``true``, as in redis-py 6: the
  server's certificate must name the host in the URL; redis-py 5 did not check);
- ``redis+sentinel://[user[:password]@]host:port[,host:port...]/service_name[/db]`` for a Redis
  managed by Sentinel: the hosts are sentinels, which name the service's current master; every
  connection asks them (again after a failover). ``rediss+sentinel://`` speaks TLS to the sentinels
  and to the data nodes, with the same ``ssl_*`` parameters. The user and password are the data
  nodes'; sentinels that want AUTH of their own get ``sentinel_username`` and ``sentinel_password``.

Every URL may also carry ``client_name`` (``CLIENT SETNAME``) and ``db``. Any other query parameter
is refused by name: redis-py would pass an unknown one to the connection as it is, and fail at the
first command with a message about a keyword argument.

``STEPQ_REDIS_PASSWORD_FILE`` names a file holding the password of the URL's user (``default``
when the URL names none), for a URL kept in plain configuration and a password mounted as a secret.

Every connection is one of ``stepq.runtime.redis_connections``' classes: a server answering
``READONLY`` (a replica now, after a failover) and a connection closed under a waiting command read
as a lost connection, which redis-py's retries and the workers' loops ride out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from stepq.redis_config import PASSWORD_FILE_ENV, RedisConfigError, read_secret_file

from .redis_connections import (
    FAILOVER_CLASSES,
    FailoverSentinelConnection,
    FailoverSentinelSSLConnection,
    FailoverSSLConnection,
    FailoverUnixConnection,
)

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
DIRECT_SCHEMES = {"redis": False, "rediss": True, "unix": False}
#: The query parameters of a TLS URL (redis-py's names).
TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")
COMMON_PARAMS = ("db", "client_name", "username", "password")
CERT_REQS = ("required", "optional", "none")
#: How long a question to a sentinel may take (which master? which replicas?).
SENTINEL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RedisTarget:
    """What a URL names: one server, or a service whose master Sentinel names.

    ``connection``: keyword arguments for the data nodes' connections (redis-py's names).
    ``sentinels``/``service_name``/``sentinel_connection``: set for a Sentinel URL only.
    """

    connection: dict[str, Any]
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    sentinel_connection: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def tcp(self) -> bool:
        return self.connection.get("connection_class") is not FailoverUnixConnection


def _query(url: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in allowed:
            raise RedisConfigError(
                f"Redis URL {redact(url)}: unknown query parameter {name!r} (stepq accepts: {', '.join(allowed)})"
            )
        if len(values) != 1:
            raise RedisConfigError(f"Redis URL {redact(url)}: {name!r} is given {len(values)} times")
        params[name] = values[0]
    return params


def _flag(url: str, name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise RedisConfigError(f"Redis URL {redact(url)}: {name}={value!r} is not true or false")


def _tls_options(url: str, params: dict[str, str], tls: bool) -> dict[str, Any]:
    """redis-py's ``ssl_*`` keyword arguments from the URL's parameters, checked."""
    given = [name for name in TLS_PARAMS if name in params]
    if not tls:
        if given:
            raise RedisConfigError(f"Redis URL {redact(url)}: {', '.join(given)} need TLS: use rediss://")
        return {}
    options: dict[str, Any] = {}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in params:
            path = Path(params[name])
            if not path.is_file() or not os.access(path, os.R_OK):
                raise RedisConfigError(f"Redis URL {redact(url)}: {name}={path}: no readable file there")
            options[name] = str(path)
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise RedisConfigError(f"Redis URL {redact(url)}: ssl_keyfile needs ssl_certfile (the client certificate)")
    reqs = params.get("ssl_cert_reqs", "required").strip().lower()
    if reqs not in CERT_REQS:
        raise RedisConfigError(f"Redis URL {redact(url)}: ssl_cert_reqs={reqs!r}; use one of {', '.join(CERT_REQS)}")
    options["ssl_cert_reqs"] = reqs
    check = reqs != "none"
    if "ssl_check_hostname" in params:
        check = _flag(url, "ssl_check_hostname", params["ssl_check_hostname"])
        if check and reqs == "none":
            raise RedisConfigError(
                f"Redis URL {redact(url)}: ssl_check_hostname=true needs ssl_cert_reqs=required or optional"
            )
    options["ssl_check_hostname"] = check
    return options


def _with_password_file(url: str, connection: dict[str, Any], environ: Mapping[str, str]) -> None:
    path = (environ.get(PASSWORD_FILE_ENV) or "").strip()
    if not path:
        return
    if connection.get("password"):
        raise RedisConfigError(f"Redis URL {redact(url)} has a password and {PASSWORD_FILE_ENV} is set; keep one")
    connection["password"] = read_secret_file(path, PASSWORD_FILE_ENV)


def _db(url: str, text: str) -> int:
    if not text.isdigit():
        raise RedisConfigError(f"Redis URL {redact(url)}: the database must be a number, got {text!r}")
    return int(text)


def _direct(url: str, environ: Mapping[str, str]) -> RedisTarget:
    parts = urlsplit(url)
    params = _query(url, parts.query, COMMON_PARAMS + TLS_PARAMS)
    try:
        kwargs: dict[str, Any] = dict(parse_url(url.split("?", 1)[0]))
    except ValueError as exc:
        raise RedisConfigError(f"Redis URL {redact(url)}: {exc}") from None
    if parts.scheme != "unix":
        if not parts.hostname:
            raise RedisConfigError(f"Redis URL {redact(url)}: no host")
        path = parts.path.strip("/")
        if path:
            kwargs["db"] = _db(url, path)
    for name in ("client_name", "username", "password"):
        if name in params:
            kwargs[name] = params[name]
    if "db" in params:
        kwargs["db"] = _db(url, params["db"])
    kwargs.update(_tls_options(url, params, DIRECT_SCHEMES[parts.scheme]))
    kwargs["connection_class"] = FAILOVER_CLASSES[kwargs.get("connection_class", Connection)]
    _with_password_file(url, kwargs, environ)
    return RedisTarget(connection=kwargs)


def _sentinel(url: str, environ: Mapping[str, str]) -> RedisTarget:
    scheme, _, rest = url.partition("://")
    tls = SENTINEL_SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    params = _query(url, query, COMMON_PARAMS + TLS_PARAMS + SENTINEL_PARAMS)
    userinfo, _, hosts = netloc.rpartition("@")
    connection: dict[str, Any] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if user:
            connection["username"] = unquote(user)
        if has_password:
            connection["password"] = unquote(password)
    sentinels: list[tuple[str, int]] = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        if not colon:
            host, port = node.strip(), "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RedisConfigError(f"Redis URL {redact(url)}: {node!r} is not a sentinel's host:port")
        sentinels.append((unquote(host), int(port)))
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise RedisConfigError(
            f"Redis URL {redact(url)}: the path must be /service_name or /service_name/db "
            f"(the master's name in the sentinels' configuration)"
        )
    if len(segments) == 2:
        connection["db"] = _db(url, segments[1])
    for name in ("client_name", "username", "password"):
        if name in params:
            connection[name] = params[name]
    if "db" in params:
        connection["db"] = _db(url, params["db"])
    tls_options = _tls_options(url, params, tls)
    connection.update(tls_options)
    connection["connection_class"] = FailoverSentinelSSLConnection if tls else FailoverSentinelConnection
    _with_password_file(url, connection, environ)
    sentinel_connection: dict[str, Any] = {"ssl": True, **tls_options} if tls else {}
    if "sentinel_username" in params:
        sentinel_connection["username"] = params["sentinel_username"]
    if "sentinel_password" in params:
        sentinel_connection["password"] = params["sentinel_password"]
    return RedisTarget(
        connection=connection,
        sentinels=tuple(sentinels),
        service_name=segments[0],
        sentinel_connection=sentinel_connection,
    )


def parse_redis_url(url: str, environ: Mapping[str, str] | None = None) -> RedisTarget:
    """What ``url`` names, checked; a ``RedisConfigError`` naming the problem otherwise."""
    env = os.environ if environ is None else environ
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(url, env)
    if scheme in DIRECT_SCHEMES:
        return _direct(url, env)
    known = ", ".join(f"{s}://" for s in [*DIRECT_SCHEMES, *SENTINEL_SCHEMES])
    raise RedisConfigError(f"Redis URL {redact(url)}: unknown scheme; use one of {known}")


def make_pool(
    url: str,
    options: dict[str, Any],
    *,
    pool_class: type[ConnectionPool] = ConnectionPool,
    sentinel_pool_class: type[SentinelConnectionPool] = SentinelConnectionPool,
    environ: Mapping[str, str] | None = None,
) -> ConnectionPool:
    """A pool of connections to what ``url`` names, with stepq's ``options`` (timeouts, retries,
    keepalive: ``stepq.runtime.connection.pool_options``); replies stay bytes."""
    target = parse_redis_url(url, environ)
    options = dict(options)
    if not target.tcp:
        options.pop("socket_keepalive", None)
        options.pop("socket_keepalive_options", None)
    # No CLIENT SETINFO on connecting: one round trip less, and a command fewer for ACL users to allow.
    kwargs = {**options, **target.connection, "decode_responses": False, "lib_name": None, "lib_version": None}
    if not target.is_sentinel:
        return pool_class(**kwargs)
    # Questions to the sentinels get a timeout even on a worker's hot path (which has none).
    sentinel_kwargs = {
        **{k: v for k, v in options.items() if k.startswith("socket_")},
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "lib_name": None,
        "lib_version": None,
        **target.sentinel_connection,
    }
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    return sentinel_pool_class(target.service_name, sentinel, is_master=True, **kwargs)


def cluster_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for a ``RedisCluster`` from a ``redis://`` or ``rediss://`` URL naming any
    one of its nodes (TLS settings and ``STEPQ_REDIS_PASSWORD_FILE`` included)."""
    target = parse_redis_url(url, environ)
    if target.is_sentinel or not target.tcp:
        raise RedisConfigError(f"Redis URL {redact(url)}: a Redis Cluster is reached with redis:// or rediss://")
    options = dict(target.connection)
    if options.pop("db", 0):
        raise RedisConfigError(f"Redis URL {redact(url)} names a database; a Redis Cluster has only database 0")
    options["ssl"] = options.pop("connection_class") is FailoverSSLConnection
    return {**options, "lib_name": None, "lib_version": None}


def redact(url: str) -> str:
    """``url`` without its password (userinfo and ``password``/``sentinel_password`` parameters)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    head, qmark, query = rest.partition("?")
    if "@" in head:  # (the last @: a password may hold an unescaped / or @)
        userinfo, _, tail = head.rpartition("@")
        user = userinfo.partition(":")[0]
        head = f"{user}:***@{tail}" if ":" in userinfo else f"{userinfo}@{tail}"
    if qmark:
        pairs = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            pairs.append(f"{name}=***" if eq and name in ("password", "sentinel_password") else pair)
        query = "&".join(pairs)
    return f"{scheme}://{head}{qmark}{query}"
