"""Real-browser fixtures for the dashboard's tests: Debian's Chromium driven by Playwright.

A test module gets one headless browser (starting Chromium costs about a second), one API server
(``ApiServer`` on loopback, the real ``create_app`` with the dashboard mounted under ``/ui``) and
real worker processes, all shared by its tests: each test makes its own runs, so they do not clash.

Without Chromium the tests skip, except when
``STEPQ_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where a missing browser is a failure: CI must not
pass by skipping them. ``STEPQ_CHROMIUM`` names the browser binary when it is not on PATH.

Playwright is driven through its async API: the tests run in pytest-asyncio's loop, where the sync
API refuses to start. ``playwright install`` (a download from Microsoft's CDN) is never needed: the
browser is the system's Chromium, launched by path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from playwright.async_api import Browser, async_playwright

from stepq.runtime.api import ApiServer, ApiSettings
from tests.helpers import REDIS_URL, WorkerProcess
from tests.http_fixtures import clean_environ, flush_test_db

#: Set to 1 (as .ci/run does) to make a missing browser fail the tests instead of skipping them.
REQUIRE_ENV = "STEPQ_REQUIRE_BROWSER"
#: Names Chromium goes by on PATH: Debian's package, Ubuntu's, Google's builds.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium binary to drive: ``$STEPQ_CHROMIUM``, else the first of ``CHROMIUM_NAMES`` on PATH."""
    named = os.environ.get("STEPQ_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_missing(reason: str) -> NoReturn:
    """Skip the test, or fail it when the environment says a browser is required."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the browser tests must run here)", pytrace=False)
    pytest.skip(f"{reason}; install it with `apt-get install chromium` (or set STEPQ_CHROMIUM)")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium (the system's), closed on exit; skips or fails when there is none."""
    executable = find_chromium()
    if executable is None:
        named = os.environ.get("STEPQ_CHROMIUM")
        browser_missing(f"STEPQ_CHROMIUM={named} is not an executable" if named else "no Chromium found on PATH")
    async with async_playwright() as playwright:
        # Playwright passes --no-sandbox by default, which root (CI containers) needs; Docker's
        # 64 MB /dev/shm is too small for Chromium's shared memory, hence /tmp.
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclasses.dataclass
class DashboardStack:
    """An API with the dashboard and the workers serving its functions, on the flushed test database."""

    api: ApiServer
    workers: list[WorkerProcess]

    @property
    def origin(self) -> str:
        return self.api.url

    @property
    def ui(self) -> str:
        """The dashboard's root URL (no trailing slash)."""
        return f"{self.api.url}/ui"

    def logs(self) -> str:
        """The workers' stderr, for failure messages."""
        return "\n".join(f"--- {w.name} ---\n{w.stderr()[-4000:]}" for w in self.workers)


@contextlib.contextmanager
def dashboard_stack(
    directory: Path, settings: ApiSettings, apps: tuple[str, ...] = ("dashboard",)
) -> Iterator[DashboardStack]:
    """Flush the test database, start the API in this process (a uvicorn thread) and one worker per
    app in ``tests/apps``; stop them all on exit."""
    flush_test_db()
    env = {**clean_environ(), "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", "STEPQ_REDIS_URL": REDIS_URL}
    api = ApiServer(REDIS_URL, settings=settings).start()
    workers: list[WorkerProcess] = []
    try:
        for i, app in enumerate(apps):
            workers.append(WorkerProcess(app, i, directory, env))
        for worker in workers:
            worker.wait_ready()
        yield DashboardStack(api, workers)
    finally:
        for worker in workers:
            worker.stop()
        api.stop()


def dev_settings() -> ApiSettings:
    """Dev mode: the dashboard is open (on loopback), any event key is accepted."""
    return ApiSettings(dev=True)
