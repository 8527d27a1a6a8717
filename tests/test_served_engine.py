"""The step-engine scenarios again, with stepq's own SDK served over HTTP (``stepq.serve``).

The apps of test_loops, test_sleep and test_retries, unchanged, are served by
``tests/apps/served.py`` under uvicorn, synced with a ``PUT`` each, and driven by
``stepq worker --http``: every invocation is an HTTP call with Inngest's protocol instead of a
call in the worker's process. The outcomes must be the same.

A second class runs the simple function in production mode: the worker signs, the serve handler
checks the signature.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from stepq.runtime.codec import unpack
from stepq.runtime.queries import RunView
from stepq.runtime.registry import Registry
from tests.apps import loops, retries, sleeps
from tests.helpers import invocations, read_lines, run_ids_for_event, run_memo, sha1, wait_for_run
from tests.http_fixtures import Service, Stack, start_stack
from tests.test_loops import TOTAL_PRODUCTS, ProductServer

#: As tests/apps/served.py mounts them (importing it would build its serve handlers here).
CLIENTS = {"loops": loops.client, "sleeps": sleeps.client, "retries": retries.client}
SIGNING_KEY = f"signkey-test-{secrets.token_hex(32)}"
EVENT_KEY = "served-event-key"


def path(name: str) -> str:
    return f"/{name}/api/inngest"


def start_served(directory: Path, *, dev: bool) -> Stack:
    signing = {} if dev else {"STEPQ_SIGNING_KEY": SIGNING_KEY}
    stack = start_stack(
        directory,
        "tests.apps.served:app",
        dev=dev,
        api_env={} if dev else {**signing, "STEPQ_EVENT_KEYS": EVENT_KEY},
        worker_env=signing,
        app_env={"INNGEST_DEV": "1"} if dev else {"INNGEST_DEV": "0", "INNGEST_SIGNING_KEY": SIGNING_KEY},
        app_path=path("loops"),
    )
    try:
        for name in CLIENTS:
            response = httpx.put(f"{stack.app.origin}{path(name)}", timeout=30)  # type: ignore[attr-defined]
            assert response.status_code == 200, f"sync of {name}: {response.status_code} {response.text}"
            assert response.json()["modified"] is True, response.text
    except BaseException:
        stack.stop()
        raise
    return stack


async def start(stack: Stack, db: Redis, function: str, name: str, data: dict[str, Any], key: str = "k") -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{stack.api_url}/e/{key}", json={"name": name, "data": data})
    assert response.status_code == 200, response.text
    [event_id] = response.json()["ids"]
    run_ids = await run_ids_for_event(db, function, event_id)
    assert len(run_ids) == 1, f"{name} started {run_ids} runs of {function}"
    return run_ids[0]


async def finished(db: Redis, run_id: str, stack: Stack, statuses: tuple[str, ...] | None = None) -> RunView:
    try:
        if statuses is None:
            return await wait_for_run(db, run_id, timeout=60)
        return await wait_for_run(db, run_id, statuses=statuses, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.output()}") from None


async def all_invocations(worker: Service, run_id: str) -> list[dict[str, Any]]:
    """The worker's invocation lines for a finished run, once the one that ended it is written."""
    deadline = time.monotonic() + 10
    while True:
        calls = invocations(worker.logs(), run_id)
        if any(str(c.get("outcome")).startswith(("completed", "failed")) for c in calls):
            return calls
        if time.monotonic() > deadline:
            raise AssertionError(f"no invocation ended run {run_id}:\n{worker.output()}")
        await asyncio.sleep(0.02)


def stdout_lines(app: Service) -> list[str]:
    """What the functions printed (the app's stdout also carries the serve handler's log lines)."""
    return [line for line in app.stdout().splitlines() if line in ("hello", "a", "b", "c")]


def attempt_times(path: Path) -> list[float]:
    return [float(line.split()[1]) for line in read_lines(path)]


@pytest.fixture(scope="class")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_served(tmp_path_factory.mktemp("served-dev"), dev=True)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def shop() -> Iterator[ProductServer]:
    with ProductServer(fail_once={100}) as server:
        yield server


class TestServedInDevMode:
    async def test_the_sync_registers_each_app_at_its_url(self, dev: Stack, db: Redis) -> None:
        records = {r.slug: r for r in await Registry(db).functions()}
        for name, client in CLIENTS.items():
            for fn in client.functions.values():
                config = records[fn.slug].config
                assert config["app_id"] == client.app_id
                assert config["url"].startswith(f"{dev.app.origin}{path(name)}?"), config["url"]  # type: ignore[attr-defined]
                assert config["retries"] == fn.retries

    async def test_simple_function_runs_outside_code_on_every_invocation(self, dev: Stack, db: Redis) -> None:
        before = len(stdout_lines(dev.app))
        run_id = await start(dev, db, "simple-function", "test/simple.function", {})
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        # (hello, a) (hello, b) (hello, c) (hello, return): four HTTP calls, each from the top.
        assert stdout_lines(dev.app)[before:] == ["hello", "a", "hello", "b", "hello", "c", "hello"]
        calls = await all_invocations(dev.worker, run_id)
        assert [c["step"] for c in calls] == ["a", "b", "c", None]
        assert [s.name for s in view.steps] == ["a", "b", "c"]
        assert all(s.attempts == 1 for s in view.steps)

    async def test_simple_function_fixed_prints_hello_once(self, dev: Stack, db: Redis) -> None:
        before = len(stdout_lines(dev.app))
        run_id = await start(dev, db, "simple-function-fixed", "test/simple.function.fixed", {})
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert stdout_lines(dev.app)[before:] == ["hello", "a", "b", "c"]
        assert [c["step"] for c in await all_invocations(dev.worker, run_id)] == ["hello", "a", "b", "c", None]

    async def test_paginated_import_retries_only_the_page_that_failed(
        self, dev: Stack, db: Redis, shop: ProductServer
    ) -> None:
        run_id = await start(dev, db, "shopify-product-import", "shopify/import.requested", {"base_url": shop.url})
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output == {"count": TOTAL_PRODUCTS, "ids": list(range(1, TOTAL_PRODUCTS + 1))}
        assert [s.name for s in view.steps] == [f"fetch-products-{c}" for c in (None, 50, 100, 150, 200)]
        assert dict(shop.hits) == {0: 1, 50: 1, 100: 2, 150: 1, 200: 1}
        assert [s.attempts for s in view.steps] == [1, 1, 2, 1, 1]
        assert [len(s.memo["data"]["products"]) for s in view.steps] == [50, 50, 50, 50, 37]

    async def test_paginated_import_with_a_constant_step_id_indexes_the_repeats(
        self, dev: Stack, db: Redis, shop: ProductServer
    ) -> None:
        run_id = await start(
            dev, db, "shopify-product-import-constant", "shopify/import.constant", {"base_url": shop.url}
        )
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output == {"count": TOTAL_PRODUCTS, "ids": list(range(1, TOTAL_PRODUCTS + 1))}
        assert dict(shop.hits) == {0: 1, 50: 1, 100: 2, 150: 1, 200: 1}
        names = ["fetch-page", "fetch-page:1", "fetch-page:2", "fetch-page:3", "fetch-page:4"]
        assert [s.key for s in view.steps] == [sha1(n) for n in names]

    async def test_sleep_parks_the_run_and_resumes_after_the_duration(
        self, dev: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "nap.log"
        run_id = await start(dev, db, "nap", "test/nap", {"log": str(log)})
        parked = await finished(db, run_id, dev, statuses=("sleeping",))
        assert parked.wake_at_ms is not None
        done = await finished(db, run_id, dev)

        assert done.status == "completed", done.error
        lines = read_lines(log)
        sleep_started = float(next(line for line in lines if line.startswith("sleep-call")).split()[1])
        [after] = [float(line.split()[1]) for line in lines if line.startswith("after")]
        assert after - sleep_started >= 2.0
        assert done.output == {"before": done.output["before"], "after": after}
        assert (await run_memo(db, run_id))[sha1("nap")] == b"\xc0", "a finished sleep is memoized as null"
        assert [s.name for s in done.steps] == ["before", "nap", "after"]

    async def test_a_step_failing_twice_then_succeeding_completes_after_three_attempts(
        self, dev: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "flaky.log"
        view = await finished(db, await start(dev, db, "flaky", "test/flaky", {"log": str(log)}), dev)

        assert view.status == "completed", view.error
        assert view.output == "ok after 3"
        assert len(attempt_times(log)) == 3
        [step] = view.steps
        assert (step.name, step.attempts, step.done) == ("call-upstream", 3, True)
        assert step.memo == {"data": "ok after 3"}
        assert step.error is not None and "upstream down (attempt 2)" in step.error

    async def test_a_non_retriable_error_fails_the_run_at_once(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "give-up.log"
        view = await finished(db, await start(dev, db, "give-up", "test/give-up", {"log": str(log)}), dev)

        assert view.status == "failed"
        assert len(attempt_times(log)) == 1
        assert view.error["name"] == "NonRetriableError"
        assert view.error["message"] == "card declined"

    async def test_a_caught_step_error_lets_the_run_complete(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "fallback.log"
        run_id = await start(dev, db, "fallback", "test/fallback", {"log": str(log)})
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output == {"fallback": True, "name": "KeyError", "message": "'no such customer'"}
        assert len(attempt_times(log)) == 1
        memo = unpack((await run_memo(db, run_id))[sha1("lookup")])
        assert set(memo) == {"error"} and memo["error"]["name"] == "KeyError"

    async def test_retry_after_error_delays_the_next_attempt(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "slow-down.log"
        view = await finished(db, await start(dev, db, "slow-down", "test/slow-down", {"log": str(log)}), dev)

        assert view.status == "completed", view.error
        assert view.output == 2
        first, second = attempt_times(log)
        assert second - first >= 1.5


@pytest.fixture(scope="class")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_served(tmp_path_factory.mktemp("served-prod"), dev=False)
    try:
        yield stack
    finally:
        stack.stop()


class TestServedInProductionMode:
    async def test_signed_calls_run_the_simple_function_and_unsigned_ones_are_refused(
        self, prod: Stack, db: Redis
    ) -> None:
        before = len(stdout_lines(prod.app))
        run_id = await start(prod, db, "simple-function", "test/simple.function", {}, key=EVENT_KEY)
        view = await finished(db, run_id, prod)

        assert view.status == "completed", view.error
        assert stdout_lines(prod.app)[before:] == ["hello", "a", "hello", "b", "hello", "c", "hello"]

        async with httpx.AsyncClient(timeout=30) as http:
            unsigned = await http.post(
                f"{prod.app.origin}{path('loops')}?fnId=t-loops-simple-function&stepId=step",  # type: ignore[attr-defined]
                json={"event": {"name": "test/simple.function", "data": {}}, "steps": {}, "ctx": {}},
            )
        assert unsigned.status_code == 401, unsigned.text
        assert len(stdout_lines(prod.app)) == before + 7, "an unsigned call ran no code"
