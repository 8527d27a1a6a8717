"""Processes for the tests of functions served over HTTP: ``stepq api``, ``stepq worker --http`` and
apps under uvicorn, each a subprocess on a free loopback port with its output captured to files.

These stacks are shared by a module's (or a class's) tests, so they do not use the ``redis`` fixture
(which flushes the database before every test and would drop the apps' registrations): a stack
flushes the test database once, when it starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis as sync_redis

from tests.helpers import REDIS_URL, ROOT, STEPQ_CLI, LoggedProcess


def free_port() -> int:
    """A loopback port nothing listens on (the kernel's choice, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flush_test_db() -> None:
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


#: Settings a developer's shell may carry that would change what these processes do.
_LEAKY = ("STEPQ_DEV", "STEPQ_SIGNING_KEY", "STEPQ_EVENT_KEYS", "STEPQ_STEP_TIMEOUT", "STEPQ_REDIS_URL")


def clean_environ() -> dict[str, str]:
    """This process's environment without Inngest's settings and stepq's mode/key settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_") and k not in _LEAKY}


class Service(LoggedProcess):
    """One subprocess (an API, a worker, an app), stdout and stderr captured to files."""

    def __init__(self, name: str, argv: list[str], directory: Path, env: dict[str, str] | None = None) -> None:
        full_env = {**clean_environ(), "PYTHONUNBUFFERED": "1", "STEPQ_LOG_LEVEL": "info", **(env or {})}
        super().__init__(name, argv, directory, full_env)

    def output(self) -> str:
        out, err = self.stdout()[-4000:], self.stderr()[-6000:]
        return f"--- {self.name} stdout ---\n{out}\n--- {self.name} stderr ---\n{err}"

    def _check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")

    def wait_http(self, url: str, timeout: float = 30.0) -> httpx.Response:
        """Block until ``url`` answers a GET (any status)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                return httpx.get(url, timeout=2.0)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    message = f"{self.name} did not answer {url} within {timeout} s:\n{self.output()}"
                    raise AssertionError(message) from None
                time.sleep(0.05)

    def wait_log(self, event: str, timeout: float = 30.0) -> None:
        """Block until a structured log line with this ``event`` appears."""
        deadline = time.monotonic() + timeout
        while not any(entry.get("event") == event for entry in self.logs()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} logged no {event!r} within {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_api(directory: Path, *, dev: bool = True, env: dict[str, str] | None = None, name: str = "api") -> Service:
    """``stepq api`` on a free port; ``.url`` is its origin. Ready when ``/health`` answers 200."""
    port = free_port()
    argv = [*STEPQ_CLI, "api", "--port", str(port), "--redis-url", REDIS_URL]
    if dev:
        argv.append("--dev")
    service = Service(name, argv, directory, env)
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    response = service.wait_http(f"{service.url}/health")  # type: ignore[attr-defined]
    assert response.status_code == 200, f"stepq api is not healthy: {response.text}\n{service.output()}"
    return service


def start_http_worker(directory: Path, *, env: dict[str, str] | None = None, name: str = "http-worker") -> Service:
    """``stepq worker --http``, ready once it logged ``worker.started``."""
    argv = [*STEPQ_CLI, "worker", "--http", "--redis-url", REDIS_URL]
    service = Service(name, argv, directory, env)
    service.wait_log("worker.started")
    return service


def start_asgi_app(
    target: str, directory: Path, *, env: dict[str, str] | None = None, path: str = "/api/inngest", name: str = "app"
) -> Service:
    """``uvicorn <module:attr>`` on a free port; ``.url`` is the serve URL (origin + ``path``)."""
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", target,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    service = Service(name, argv, directory, env)
    service.origin = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    service.url = f"{service.origin}{path}"  # type: ignore[attr-defined]
    service.wait_http(service.url)  # type: ignore[attr-defined]
    return service


def sync_app(app_url: str) -> httpx.Response:
    """What a deploy hook does: ``PUT`` the serve URL, so that the app registers with the API."""
    return httpx.put(app_url, timeout=30.0)


@dataclasses.dataclass
class Stack:
    """An API, an HTTP worker and an app, started together and stopped together."""

    api: Service
    worker: Service
    app: Service
    directory: Path

    @property
    def api_url(self) -> str:
        return str(self.api.url)  # type: ignore[attr-defined]

    def services(self) -> list[Service]:
        return [self.app, self.worker, self.api]

    def output(self) -> str:
        return "\n".join(s.output() for s in self.services())

    def stop(self) -> None:
        for service in self.services():
            service.stop()


def start_stack(
    directory: Path,
    app_target: str,
    *,
    dev: bool = True,
    api_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    app_env: dict[str, str] | None = None,
    app_path: str = "/api/inngest",
    events_over_http: bool = False,
) -> Stack:
    """``stepq api``, ``stepq worker --http`` and ``uvicorn <app_target>``, started in that order on
    the flushed test database; whatever started is stopped if a later one fails.

    The app syncs with that API (``INNGEST_BASE_URL``) and, with ``events_over_http``, sends its
    events there too (``STEPQ_EVENT_API_URL``) rather than to Redis.
    """
    flush_test_db()
    started: list[Service] = []
    try:
        api = start_api(directory, dev=dev, env=api_env)
        started.append(api)
        worker = start_http_worker(directory, env=worker_env)
        started.append(worker)
        api_url = str(api.url)  # type: ignore[attr-defined]
        to_api = {"INNGEST_BASE_URL": api_url, **({"STEPQ_EVENT_API_URL": api_url} if events_over_http else {})}
        app = start_asgi_app(app_target, directory, env={**to_api, **(app_env or {})}, path=app_path)
        started.append(app)
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise
    return Stack(api, worker, app, directory)


@contextlib.contextmanager
def synced(stack: Stack) -> Iterator[Stack]:
    """The stack once its app synced (a ``PUT``, as a deploy hook does); stopped on exit."""
    try:
        response = sync_app(str(stack.app.url))  # type: ignore[attr-defined]
        assert response.status_code == 200 and response.json().get("ok") is not False, response.text
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def dev_stack(directory: Path, app_target: str, *, api_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """``stepq api --dev``, ``stepq worker --http`` and ``app_target`` in Inngest's dev mode, synced;
    stopped on exit."""
    with synced(start_stack(directory, app_target, api_env=api_env, app_env={"INNGEST_DEV": "1"})) as stack:
        yield stack


async def post_events(api_url: str, events: list[dict[str, Any]]) -> list[str]:
    """``POST /e/<key>`` with a list of events, as any Inngest SDK sends them; the stored events' ids."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{api_url}/e/anykey", json=events)
    assert response.status_code == 200, response.text
    return [str(i) for i in response.json()["ids"]]


def served_function(
    app_id: str, name: str, app_url: str, *, event: str, retries: int = 1, backoff: dict[str, float] | None = None
) -> dict[str, Any]:
    """One function of a register payload (Inngest's shape), served at ``app_url?fnId=<app>-<name>``."""
    slug = f"{app_id}-{name}"
    function: dict[str, Any] = {
        "id": slug,
        "name": name,
        "triggers": [{"event": event}],
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": f"{app_url}?fnId={slug}&stepId=step"},
                "retries": {"attempts": retries},
            }
        },
    }
    if backoff is not None:
        function["backoff"] = backoff
    return function


def register_payload(app_url: str, app_id: str, functions: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``POST /fn/register`` takes from an app (what its sync sends)."""
    return {"url": app_url, "appName": app_id, "sdk": "py:v0.0.0", "framework": "starlette", "functions": functions}


def stepq_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``stepq <args>`` against the test database."""
    return subprocess.run(
        [*STEPQ_CLI, *args, "--redis-url", REDIS_URL],
        cwd=ROOT,
        env={**clean_environ(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
