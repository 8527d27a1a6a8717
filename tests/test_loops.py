"""Issue 2.1 and 2.2: the examples of "Working with Loops in Inngest", run by a real worker."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from redis.asyncio import Redis

import stepq
from tests.helpers import StartWorkers, all_invocations, run_memo, run_stack, sha1, start_run, wait_for_run

TOTAL_PRODUCTS = 237
PAGE_SIZE = 50


class ProductServer:
    """A loopback shop API: ``GET /products?since_id=N`` returns up to 50 products with id > N.

    Counts the requests per ``since_id``; the first request of each page in ``fail_once`` gets a 500.
    """

    def __init__(self, fail_once: set[int]) -> None:
        self.hits: Counter[int] = Counter()
        self.fail_once = set(fail_once)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/products":
                    self.send_error(404)
                    return
                since_id = int(parse_qs(url.query).get("since_id", ["0"])[0])
                with server._lock:
                    server.hits[since_id] += 1
                    fail = since_id in server.fail_once and server.hits[since_id] == 1
                if fail:
                    self.send_error(500, "upstream hiccup")
                    return
                first = since_id + 1
                ids = range(first, min(first + PAGE_SIZE, TOTAL_PRODUCTS + 1))
                body = json.dumps({"products": [{"id": i, "title": f"product {i}"} for i in ids]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ProductServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def shop() -> Iterator[ProductServer]:
    with ProductServer(fail_once={100}) as server:
        yield server


async def test_simple_function_runs_outside_code_on_every_invocation(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("loops")
    run_id = await start_run(sender, redis, "simple-function", "test/simple.function", {})

    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    # (hello, a) (hello, b) (hello, c) (hello, return): code outside steps runs once per invocation.
    assert worker.stdout().splitlines() == ["hello", "a", "hello", "b", "hello", "c", "hello"]
    calls = await all_invocations(worker, run_id)
    assert len(calls) == 4, calls
    assert [c["step"] for c in calls] == ["a", "b", "c", None]
    assert [s.name for s in view.steps] == ["a", "b", "c"]
    assert all(s.attempts == 1 for s in view.steps)


async def test_simple_function_fixed_prints_hello_once(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    [worker] = start_workers("loops")
    run_id = await start_run(sender, redis, "simple-function-fixed", "test/simple.function.fixed", {})

    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    assert worker.stdout().splitlines() == ["hello", "a", "b", "c"]
    assert [c["step"] for c in await all_invocations(worker, run_id)] == ["hello", "a", "b", "c", None]


async def test_paginated_import_collects_every_page_and_retries_only_the_failed_one(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, shop: ProductServer
) -> None:
    start_workers("loops")
    run_id = await start_run(
        sender, redis, "shopify-product-import", "shopify/import.requested", {"base_url": shop.url}
    )

    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    assert view.output == {"count": TOTAL_PRODUCTS, "ids": list(range(1, TOTAL_PRODUCTS + 1))}
    cursors = [None, 50, 100, 150, 200]
    assert [s.name for s in view.steps] == [f"fetch-products-{c}" for c in cursors]
    assert [s.done for s in view.steps] == [True] * 5
    # Each page was fetched once; the page whose first request failed, exactly twice.
    assert dict(shop.hits) == {0: 1, 50: 1, 100: 2, 150: 1, 200: 1}
    assert [s.attempts for s in view.steps] == [1, 1, 2, 1, 1]
    assert [len(s.memo["data"]["products"]) for s in view.steps] == [50, 50, 50, 50, 37]


async def test_paginated_import_with_a_constant_step_id_indexes_the_repeats(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, shop: ProductServer
) -> None:
    start_workers("loops")
    run_id = await start_run(
        sender, redis, "shopify-product-import-constant", "shopify/import.constant", {"base_url": shop.url}
    )

    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    assert view.output == {"count": TOTAL_PRODUCTS, "ids": list(range(1, TOTAL_PRODUCTS + 1))}
    assert dict(shop.hits) == {0: 1, 50: 1, 100: 2, 150: 1, 200: 1}
    names = ["fetch-page", "fetch-page:1", "fetch-page:2", "fetch-page:3", "fetch-page:4"]
    expected_keys = [sha1(n) for n in names]
    assert await run_stack(redis, run_id) == expected_keys
    assert set(await run_memo(redis, run_id)) == set(expected_keys)
    assert [s.key for s in view.steps] == expected_keys
