"""A worker's metrics: what one job's outcome counts, and the endpoint Prometheus scrapes.

The executor makes one call per invocation (``invocation_started`` before the function runs,
``invocation_ended`` once its plan is applied); this module turns the plan and the write's outcome
into the counters of ``stepq.runtime.metrics``. The endpoint (``stepq worker --metrics-port N`` or
``STEPQ_METRICS_PORT``) is prometheus_client's own HTTP server, in a daemon thread: a scrape never
waits on, nor blocks, the worker's event loop. It binds loopback unless told otherwise
(``--metrics-host``/``STEPQ_METRICS_HOST``): the worker's endpoint has no authentication.
"""

from __future__ import annotations

import os
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from stepq.runtime import metrics
from stepq.runtime.metrics import (
    DUPLICATE_EXECUTIONS,
    LEASES_LOST,
    STEP_DURATION,
    STEP_RETRIES,
    STEPS_COMPLETED,
    STEPS_FAILED,
    STEPS_STARTED,
    WRITES_REFUSED,
)
from stepq.runtime.plan import Commit, Plan, Resolve, Retry
from stepq.runtime.store import Outcome

#: Refusals that mean the invocation's work was done twice (at-least-once delivery at work).
DUPLICATES = frozenset({Outcome.DUPLICATE, Outcome.STALE, Outcome.FENCED})
#: Refusals that mean the run ended while the invocation ran.
ENDED = frozenset({Outcome.DONE, Outcome.CANCELLED, Outcome.MISSING})
DEFAULT_HOST = "127.0.0.1"


def invocation_started(function: str) -> None:
    """An invocation of ``function`` is about to run its code."""
    if metrics.enabled():
        STEPS_STARTED.inc(function)


def invocation_ended(function: str, plan: Plan, outcome: Outcome, seconds: float) -> None:
    """An invocation's plan was applied with ``outcome``; it took ``seconds`` up to its decision."""
    if not metrics.enabled():
        return
    STEP_DURATION.observe(seconds, function)
    if outcome is Outcome.OK or outcome is Outcome.JOINED:  # identity first: the common path stays cheap
        write = plan.write
        if isinstance(write, (Commit, Resolve)):  # a tuple: cheaper than a union
            # a step's result: an error value is a step that failed for good
            failed = isinstance(write.value, dict) and "error" in write.value
            (STEPS_FAILED if failed else STEPS_COMPLETED).inc(function)
        elif isinstance(write, Retry):
            STEP_RETRIES.inc(function, "step" if write.executed else "function")
    elif outcome is Outcome.STATE_TOO_LARGE:
        STEPS_FAILED.inc(function)  # the value broke the run's state limit: the run failed
    elif outcome in DUPLICATES:
        DUPLICATE_EXECUTIONS.inc(function, outcome.value)
    elif outcome in ENDED:
        WRITES_REFUSED.inc(function, outcome.value)


def lease_lost(queue: str) -> None:
    if metrics.enabled():
        LEASES_LOST.inc(queue)


class MetricsServer:
    """prometheus_client's HTTP server for ``stepq.runtime.metrics.REGISTRY``, in a daemon thread."""

    def __init__(self, port: int, host: str = DEFAULT_HOST) -> None:
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        """Listen (port 0 picks a free one: see ``port``) and start counting; OSError if the port is taken."""
        metrics.enable()
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=metrics.REGISTRY)
        self.port = self._server.server_port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def endpoint_options(port: int | None, host: str | None) -> tuple[int | None, str]:
    """The metrics port and host: the command line's, else ``STEPQ_METRICS_PORT``/``STEPQ_METRICS_HOST``;
    ValueError naming the variable when it is not a port."""
    if port is None:
        raw = os.environ.get("STEPQ_METRICS_PORT", "").strip()
        if raw:
            try:
                port = int(raw)
            except ValueError:
                raise ValueError(f"STEPQ_METRICS_PORT must be a port number, got {raw!r}") from None
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"the metrics port must be within 0..65535, got {port}")
    return port, host or os.environ.get("STEPQ_METRICS_HOST", "").strip() or DEFAULT_HOST
