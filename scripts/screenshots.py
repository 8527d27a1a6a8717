"""Take the README's screenshots of the dashboard from real runs: ``scripts/screenshots``.

Starts a private redis-server, a worker for ``examples/store.py``, and the API with the dashboard
(dev mode, loopback); sends a mix of events (orders that complete, one after a retry, orders asleep
until their follow-up, a refund waiting for approval, a catalog sync failing after its retries, an
event no function listens to); waits for each run to reach the state the pictures show; then drives
the system's Chromium (Playwright, headless) over the main pages and saves PNGs into
docs/screenshots/. Everything it started is stopped on exit.

Options: ``--out DIR`` (default docs/screenshots), ``--chromium PATH`` (default: from PATH, or
``$STEPQ_CHROMIUM``), ``--width`` / ``--height`` of the window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import stepq
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.connection import connect
from stepq.runtime.queries import RunView, get_run, list_runs
from stepq.workers.embedded import EmbeddedRedis
from stepq.workers.logs import configure as configure_logs

ROOT = Path(__file__).resolve().parent.parent

APP = "examples.store:client"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")

#: (event name, data, the status its run must reach before the pictures are taken; None: no run).
EVENTS: list[tuple[str, dict[str, Any], str | None]] = [
    ("shop/catalog.sync", {"supplier": "acme-supply", "pages": 3}, "completed"),
    ("shop/order.placed", {"order_id": 1041, "total": 42.50, "items": 1, "follow_up": "1s"}, "completed"),
    ("shop/refund.requested", {"order_id": 1039, "amount": 12.00}, "waiting"),
    ("shop/catalog.sync", {"supplier": "north-wind", "pages": 4, "broken_page": 3}, "failed"),
    (
        "shop/order.placed",
        {"order_id": 1042, "total": 59.90, "items": 3, "gateway_hiccup": True, "follow_up": "2s"},
        "completed",
    ),
    ("shop/cart.abandoned", {"cart_id": "c_8812", "email": "ada@example.com"}, None),
    ("shop/order.placed", {"order_id": 1043, "total": 18.00, "items": 1, "follow_up": "3d"}, "sleeping"),
    ("shop/refund.requested", {"order_id": 1040, "amount": 19.90}, "waiting"),
    (
        "shop/order.placed",
        {"order_id": 1044, "total": 127.30, "items": 5, "gateway_hiccup": True, "follow_up": "3d"},
        "sleeping",
    ),
]
#: Sent once the refund of order 1039 waits: it approves it, so that run completes.
APPROVAL = ("shop/refund.approved", {"order_id": 1039, "manager": "grace"})


def find_chromium(given: str | None) -> str:
    for candidate in (given, os.environ.get("STEPQ_CHROMIUM")):
        if candidate:
            return candidate
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    sys.exit("scripts/screenshots: no Chromium found: apt-get install chromium, or pass --chromium PATH")


class Worker:
    """``stepq worker examples.store:client`` as a subprocess, its output in a file."""

    def __init__(self, redis_url: str, directory: Path) -> None:
        self.log = directory / "worker.log"
        env = {**os.environ, "STEPQ_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1", "STEPQ_LOG_LEVEL": "info"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stepq.workers.cli", "worker", APP, "--redis-url", redis_url],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while '"worker.started"' not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"scripts/screenshots: the worker did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def make_runs(redis_url: str) -> dict[str, RunView]:
    """Send the events, wait for each run to reach its state; the runs by a short name for the pages."""
    client = stepq.Client("screenshots", redis_url=redis_url)
    redis = connect(redis_url)
    try:
        wanted: list[tuple[str, str]] = []  # (run id, status)
        by_order: dict[str, str] = {}
        for name, data, status in EVENTS:
            [event_id] = await client.send(stepq.Event(name=name, data=data))
            await asyncio.sleep(0.05)  # distinct start times, so the list reads like real traffic
            if status is None:
                continue
            runs = [v for v in await list_runs(redis, limit=100) if event_id in v.event_ids]
            assert len(runs) == 1, f"{name} started {len(runs)} runs"
            wanted.append((runs[0].run_id, status))
            key = str(data.get("order_id") or data.get("supplier"))
            by_order[f"{name}:{key}"] = runs[0].run_id
        await wait_for(redis, [(by_order["shop/refund.requested:1039"], "waiting")])
        await client.send(stepq.Event(name=APPROVAL[0], data=APPROVAL[1]))
        wanted = [(r, "completed" if r == by_order["shop/refund.requested:1039"] else s) for r, s in wanted]
        await wait_for(redis, wanted)
        views = {key: await get_run(redis, run_id) for key, run_id in by_order.items()}
        return {key: view for key, view in views.items() if view is not None}
    finally:
        await redis.aclose()
        await client.aclose()


async def wait_for(redis: Any, wanted: Sequence[tuple[str, str]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        behind = []
        for run_id, status in wanted:
            view = await get_run(redis, run_id, with_steps=False)
            if view is None or view.status != status:
                behind.append((run_id, status, view.status if view else None))
        if not behind:
            return
        if time.monotonic() > deadline:
            sys.exit(f"scripts/screenshots: runs did not reach their state: {behind}")
        await asyncio.sleep(0.1)


#: (file name, path under /ui, whether to take the whole page rather than the window).
Shot = tuple[str, str, bool]


def shoot(chromium: str, ui: str, out: Path, pages: Sequence[Shot], size: tuple[int, int]) -> list[Path]:
    """Open each page and save it as ``<name>.png``."""
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": size[0], "height": size[1]}, device_scale_factor=1)
            page = context.new_page()
            for name, path, full_page in pages:
                response = page.goto(ui + path, wait_until="load")  # server-rendered: styles are in at load
                if response is None or not response.ok:
                    status = response.status if response else "no answer"
                    raise SystemExit(f"scripts/screenshots: {ui + path} answered {status}")
                target = out / f"{name}.png"
                page.screenshot(path=str(target), full_page=full_page)
                saved.append(target)
        finally:
            browser.close()
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--chromium")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    configure_logs("warning")  # the in-process API's lines would bury the list of saved files
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="stepq-screenshots-") as tmp, EmbeddedRedis() as redis:
        worker = Worker(redis.url, Path(tmp))
        api = None
        try:
            worker.wait_ready()
            api = ApiServer(redis.url, settings=ApiSettings(dev=True)).start()
            runs = asyncio.run(make_runs(redis.url))
            ui = f"{api.url}/ui"
            order = runs["shop/order.placed:1042"].run_id
            failed = runs["shop/catalog.sync:north-wind"].run_id
            pages: list[Shot] = [
                ("runs", "/runs", False),
                ("run-timeline", f"/runs/{order}", True),
                ("run-failed", f"/runs/{failed}", False),
                ("functions", "/functions", False),
                ("events", "/events", False),
            ]
            for path in shoot(chromium, ui, args.out, pages, (args.width, args.height)):
                print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        finally:
            if api is not None:
                api.stop()
            worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
