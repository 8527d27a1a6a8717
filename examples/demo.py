"""The stepq demo: a real worker runs the shop example's functions on Redis; this prints what happened.

    python examples/demo.py        (or scripts/demo on a fresh checkout)

It uses the Redis at ``STEPQ_REDIS_URL`` when one answers there, else starts a private redis-server.
Then it starts a worker process (``python -m workers.cli worker examples.shop:client``) and a fake
shop API, sends events with ``stepq.Client.send``, waits for every run to end, prints each run (its
status, output and steps with their attempts) and what the functions printed, and stops the worker
and Redis. Exit status: 0 when every run completed, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

# `python examples/demo.py` puts examples/ on sys.path, not the project root that holds the package.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import stepq  # noqa: E402
from examples.fake_shop import FakeShop  # noqa: E402
from examples.shop import client as shop_app  # noqa: E402
from stepq.runtime.connection import connect  # noqa: E402
from stepq.runtime.queries import RunView, get_run, list_runs  # noqa: E402
from stepq.runtime.registry import Registry  # noqa: E402
from stepq.workers.embedded import EmbeddedRedis, redis_answers  # noqa: E402

#: Every run must end within this many seconds of the first event.
TIMEOUT_S = 60.0
#: How long the worker gets to register the app's functions.
WORKER_READY_S = 30.0
#: How long the worker gets to drain and exit after SIGTERM before it is killed.
WORKER_STOP_S = 30.0
TERMINAL = ("completed", "failed", "cancelled")
#: Products in the fake shop: five pages of 50, the last one short.
PRODUCTS = 237
#: The page after this cursor fails once (HTTP 503), to show a step retried on its own.
FLAKY_CURSOR = 100


class DemoError(Exception):
    """The demo could not go on; the message says why."""


class WorkerProcess:
    """``stepq worker examples.shop:client`` as a child process, its output kept in files."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.stdout_path = workdir / "worker.out"
        self.log_path = workdir / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, "STEPQ_REDIS_URL": self.redis_url, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "stepq.workers.cli", "worker", "examples.shop:client"]
        command += ["--redis-url", self.redis_url]
        with self.stdout_path.open("wb") as out, self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=log
            )
        return self

    def check_alive(self) -> None:
        """Raise DemoError, with the worker's last log lines, if the worker has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(f"the worker exited with code {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM (the worker drains, then exits), SIGKILL if it takes too long; returns its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                print(f"  worker did not exit within {WORKER_STOP_S:.0f} s of SIGTERM; killing it")
                process.kill()
                process.wait()
        return process.returncode

    def stdout_size(self) -> int:
        return self.stdout_path.stat().st_size

    def printed_since(self, offset: int) -> list[str]:
        """Lines the functions printed (the worker's stdout) after byte ``offset``."""
        with self.stdout_path.open("rb") as out:
            out.seek(offset)
            return out.read().decode(errors="replace").splitlines()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "  (no worker log)"
        return "\n".join("  " + line for line in text.splitlines()[-lines:]) or "  (worker log is empty)"

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.stop()


def pick_redis(stack: contextlib.ExitStack) -> str:
    """``STEPQ_REDIS_URL`` when a Redis answers there; otherwise a private redis-server for the demo."""
    configured = os.environ.get("STEPQ_REDIS_URL")
    if configured and redis_answers(configured):
        print(f"Redis: {configured} (STEPQ_REDIS_URL)")
        return configured
    if configured:
        print(f"Redis: nothing answers at {configured} (STEPQ_REDIS_URL); starting a private redis-server")
    embedded = stack.enter_context(EmbeddedRedis())
    print(f"Redis: private redis-server at {embedded.url} ({embedded.executable}), stopped when the demo ends")
    return embedded.url


async def wait_for_registration(redis: Any, worker: WorkerProcess) -> None:
    """Wait until the worker has registered the app's functions: events sent before would start nothing."""
    wanted = {fn.slug for fn in shop_app.functions.values()}
    deadline = time.monotonic() + WORKER_READY_S
    while True:
        registered = {record.slug for record in await Registry(redis).functions()}
        if wanted <= registered:
            return
        worker.check_alive()
        if time.monotonic() > deadline:
            raise DemoError(
                f"the worker did not register its functions within {WORKER_READY_S:.0f} s:\n{worker.log_tail()}"
            )
        await asyncio.sleep(0.05)


async def find_runs(redis: Any, event_ids: list[str], expected: int, deadline: float) -> list[str]:
    """The ids of the runs the sent events started (oldest first)."""
    wanted = set(event_ids)
    while True:
        views = await list_runs(redis, limit=max(100, expected * 4))
        found = [v for v in views if wanted & set(v.event_ids)]
        if len(found) >= expected:
            return [v.run_id for v in sorted(found, key=lambda v: (v.created_ms, v.run_id))]
        if time.monotonic() > deadline:
            raise DemoError(f"expected {expected} run(s) for events {event_ids}, found {len(found)}")
        await asyncio.sleep(0.02)


async def wait_for_runs(redis: Any, run_ids: list[str], worker: WorkerProcess, deadline: float) -> list[RunView]:
    """Poll until every run has ended; returns their final views."""
    while True:
        views = [await get_run(redis, run_id) for run_id in run_ids]
        if all(v is not None and v.status in TERMINAL for v in views):
            return [v for v in views if v is not None]
        worker.check_alive()
        if time.monotonic() > deadline:
            pending = ", ".join(
                f"{run_id} ({v.function}: {v.status})" if v else f"{run_id} (gone)"
                for run_id, v in zip(run_ids, views, strict=True)
                if v is None or v.status not in TERMINAL
            )
            raise DemoError(f"runs still unfinished after {TIMEOUT_S:.0f} s: {pending}\n{worker.log_tail()}")
        await asyncio.sleep(0.05)


def compact(value: Any, width: int = 8) -> Any:
    """``value`` with long lists shortened for display: ``[1, 2, 3, 4, 5, "...", 237]``."""
    if isinstance(value, list):
        items = [compact(v, width) for v in value]
        if len(items) > width:
            return [*items[: width - 3], f"... {len(items) - (width - 2)} more ...", *items[-1:]]
        return items
    if isinstance(value, dict):
        return {k: compact(v, width) for k, v in value.items()}
    return value


def print_run(view: RunView) -> None:
    ok = view.status == "completed"
    took = ""
    if view.ended_ms:
        took = f" in {(view.ended_ms - (view.started_ms or view.created_ms)) / 1000:.2f} s"
    print(f"  [{'ok' if ok else 'FAILED'}] {view.function}: {view.status}{took}   (run {view.run_id})")
    if view.status == "completed":
        print(f"       output: {json.dumps(compact(view.output))}")
    if view.error is not None:
        error = view.error
        text = f"{error.get('name')}: {error.get('message')}" if isinstance(error, dict) else str(error)
        print(f"       error:  {text}")
    if view.steps:
        width = max(len(step.name) for step in view.steps)
        print("       steps:")
        for i, step in enumerate(view.steps, 1):
            took = f"{step.duration_ms} ms" if step.duration_ms is not None else "-"
            state = "done" if step.done else "pending"
            line = f"         {i}. {step.name:<{width}}  {state:<7}  attempts={step.attempts}  {took}"
            if step.error:
                line += f"   (earlier attempt: {step.error.splitlines()[0]})"
            print(line)


async def phase(
    title: str,
    explain: str,
    events: list[stepq.Event],
    *,
    client: stepq.Client,
    redis: Any,
    worker: WorkerProcess,
    deadline: float,
) -> tuple[list[RunView], list[str]]:
    """Send ``events``, wait for the runs they start, print them; returns the runs and the printed lines."""
    print(f"\n== {title}")
    print(f"   {explain}")
    offset = worker.stdout_size()
    expected = sum(1 for e in events for fn in shop_app.functions.values() if e.name in fn.event_names)
    sent_at = time.monotonic()
    event_ids = await client.send(events)
    print(f"   sent {', '.join(e.name for e in events)} -> {expected} run(s)")
    run_ids = await find_runs(redis, event_ids, expected, deadline)
    views = await wait_for_runs(redis, run_ids, worker, deadline)
    print(f"   every run ended {time.monotonic() - sent_at:.2f} s after the send")
    for view in views:
        print_run(view)
    printed = worker.printed_since(offset)
    if printed:
        print(f"   printed by the function(s), in the worker: {' '.join(printed)}")
    return views, printed


async def run_demo(redis_url: str, worker: WorkerProcess, shop: FakeShop) -> bool:
    """The events, one group at a time; True when every run completed."""
    redis = connect(redis_url)
    client = stepq.Client("shop", redis_url=redis_url)
    try:
        await wait_for_registration(redis, worker)
        print(f"Worker: pid {worker.process.pid if worker.process else '?'}, functions registered")
        deadline = time.monotonic() + TIMEOUT_S
        views: list[RunView] = []

        got, printed = await phase(
            "1. simple-function: 'hello' is outside the steps",
            "Each step is its own invocation that re-enters the function from the top: expect hello x4.",
            [stepq.Event(name="test/simple.function")],
            client=client,
            redis=redis,
            worker=worker,
            deadline=deadline,
        )
        views += got
        print(f"   'hello' printed {printed.count('hello')} time(s); the Inngest docs say 4")

        got, printed = await phase(
            "2. simple-function-fixed: 'hello' is a step too",
            "A finished step is memoized and never runs again: expect hello a b c, each once.",
            [stepq.Event(name="test/simple.function.fixed")],
            client=client,
            redis=redis,
            worker=worker,
            deadline=deadline,
        )
        views += got
        print(f"   'hello' printed {printed.count('hello')} time(s); the Inngest docs say 1")

        got, _ = await phase(
            "3. product-import and order-follow-up, at once",
            f"The import pages through {PRODUCTS} products, 50 per step; the page after id {FLAKY_CURSOR} "
            "fails once (HTTP 503) and only that step is retried. The follow-up sleeps 2 s in Redis.",
            [
                stepq.Event(name="shop/import.requested", data={"api": shop.url}),
                stepq.Event(name="shop/order.placed", data={"order_id": 1001, "email": "ada@example.com"}),
            ],
            client=client,
            redis=redis,
            worker=worker,
            deadline=deadline,
        )
        views += got
        fetches = ", ".join(f"{'first' if k == 0 else k}: {n}" for k, n in sorted(shop.requests.items()))
        print(f"   shop requests per page cursor: {fetches}")
        return all(v.status == "completed" for v in views)
    finally:
        await client.aclose()
        await redis.aclose()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The default SIGTERM action skips `finally`; exiting through SystemExit stops the worker and Redis.
    raise SystemExit(128 + signum)


def main() -> int:
    """Run the demo; 0 when every run completed."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="stepq-demo-"))
    ok = False
    try:
        with contextlib.ExitStack() as stack:
            # Closed in reverse: the shop, then the worker (it drains), then Redis last.
            redis_url = pick_redis(stack)
            worker = stack.enter_context(WorkerProcess(redis_url, workdir))
            shop = stack.enter_context(FakeShop(total=PRODUCTS, flaky={FLAKY_CURSOR}))
            print(f"Shop:  fake shop API at {shop.url}")
            try:
                ok = asyncio.run(run_demo(redis_url, worker, shop))
            except DemoError as exc:
                print(f"\ndemo: {exc}", file=sys.stderr)
            print("\nStopping the worker (SIGTERM)...")
            started = time.monotonic()
            code = worker.stop()
            print(f"  worker exited with code {code} after {time.monotonic() - started:.2f} s")
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"demo: the worker's output is kept in {workdir}", file=sys.stderr)
    print("\nAll runs completed." if ok else "\nSome runs did not complete.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
