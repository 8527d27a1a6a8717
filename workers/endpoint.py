"""A worker's HTTP endpoint: ``/livez``, ``/readyz`` and ``/metrics`` on one port.

``stepq worker --health-port N`` (``STEPQ_HEALTH_PORT``) or, as before, ``--metrics-port N``
(``STEPQ_METRICS_PORT``) start it; both name the same endpoint, so a Kubernetes pod needs one port
for its probes and its scrape. It is a threaded WSGI server (wsgiref, with prometheus_client's
exposition app for ``/metrics``) in a daemon thread: a probe or a scrape never waits on, nor blocks,
the worker's event loop, which is what lets ``/livez`` notice that loop is stuck.

It binds loopback unless told otherwise (``--health-host``/``STEPQ_HEALTH_HOST``, or
``--metrics-host``/``STEPQ_METRICS_HOST``): it has no authentication. In a container the
healthcheck runs inside, so loopback serves; a kubelet probes the pod's address, so in Kubernetes
set ``STEPQ_HEALTH_HOST=0.0.0.0``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from stepq.runtime import metrics

from .health import Health

DEFAULT_HOST = "127.0.0.1"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointAddress:
    host: str
    #: 0 picks a free port (``WorkerEndpoint.port`` tells which).
    port: int


def endpoint_address(
    health_port: int | None = None,
    health_host: str | None = None,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
) -> EndpointAddress | None:
    """Where the worker's endpoint listens: the command line's options, else the environment's
    (``STEPQ_HEALTH_PORT``/``STEPQ_HEALTH_HOST``, ``STEPQ_METRICS_PORT``/``STEPQ_METRICS_HOST``);
    None when no port is given. ValueError naming the option when a port is not one, or when the
    health and metrics options name two different ports or hosts (there is one endpoint)."""
    health = _port(health_port, "STEPQ_HEALTH_PORT", "health")
    scrape = _port(metrics_port, "STEPQ_METRICS_PORT", "metrics")
    if health is not None and scrape is not None and health != scrape:
        raise ValueError(
            f"the health port ({health}) and the metrics port ({scrape}) differ: a worker serves /livez, "
            "/readyz and /metrics on one port; give one of them"
        )
    port = health if health is not None else scrape
    if port is None:
        return None
    hosts = {
        host
        for host in (
            health_host or os.environ.get("STEPQ_HEALTH_HOST", "").strip(),
            metrics_host or os.environ.get("STEPQ_METRICS_HOST", "").strip(),
        )
        if host
    }
    if len(hosts) > 1:
        raise ValueError(
            f"the health host and the metrics host differ ({' and '.join(sorted(hosts))}): "
            "a worker serves /livez, /readyz and /metrics on one address; give one of them"
        )
    return EndpointAddress(hosts.pop() if hosts else DEFAULT_HOST, port)


def _port(given: int | None, variable: str, name: str) -> int | None:
    if given is None:
        raw = os.environ.get(variable, "").strip()
        if not raw:
            return None
        try:
            given = int(raw)
        except ValueError:
            raise ValueError(f"{variable} must be a port number, got {raw!r}") from None
    if not 0 <= given <= 65535:
        raise ValueError(f"the {name} port must be within 0..65535, got {given}")
    return given


def health_app(health: Health) -> WsgiApp:
    """The WSGI app: ``/livez`` and ``/readyz`` from ``health``, ``/metrics`` from prometheus_client."""
    scrape: WsgiApp = make_wsgi_app(metrics.REGISTRY)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return scrape(environ, start_response)
        if path == "/livez":
            ok, body = health.liveness()
        elif path == "/readyz":
            ok, body = health.readiness()
        else:
            ok, body = False, {"error": f"no such path: {path}; try /livez, /readyz or /metrics"}
            return _answer(start_response, "404 Not Found", body, environ)
        return _answer(start_response, "200 OK" if ok else "503 Service Unavailable", body, environ)

    return app


def _answer(start_response: StartResponse, status: str, body: dict[str, Any], environ: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")],
    )
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [data]


class _QuietHandler(WSGIRequestHandler):
    """No access log: a probe every few seconds is not news."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WorkerEndpoint:
    """The endpoint's server, in a daemon thread (see the module docstring)."""

    def __init__(self, address: EndpointAddress, health: Health) -> None:
        self.host = address.host
        self.port = address.port
        self.health = health
        self._server: WSGIServer | None = None

    def start(self) -> WorkerEndpoint:
        """Listen and start counting metrics; OSError if the address is taken or not this host's."""
        family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("_Server", (ThreadingWSGIServer,), {"address_family": family})
        metrics.enable()
        self._server = make_server(self.host, self.port, health_app(self.health), server_class, _QuietHandler)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, name="stepq-endpoint", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
