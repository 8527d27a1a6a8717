"""A tiny fake shop API for the examples: ``GET /products.json?since_id=N&limit=50``.

It serves ``total`` products with ids 1..total, ``limit`` per page after ``since_id``, in the shape of
Shopify's REST product listing (``{"products": [...]}``), so the import example pages through it the
way the Inngest docs page through Shopify::

    with FakeShop(total=237) as shop:
        print(shop.url)  # http://127.0.0.1:<port>

``flaky`` names ``since_id`` values whose first request answers 503, to show a step being retried;
``latency_s`` delays every answer, to keep steps in flight (e.g. to watch a worker drain on SIGTERM).
Run it on its own with ``python -m examples.fake_shop --host 0.0.0.0 --port 8080``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: Shopify's page size for the product listing.
DEFAULT_LIMIT = 50
MAX_LIMIT = 250


class FakeShop:
    """An HTTP server on a background thread that lists ``total`` products page by page."""

    def __init__(
        self,
        total: int = 237,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        flaky: Iterable[int] = (),
        latency_s: float = 0.0,
    ) -> None:
        if total < 0:
            raise ValueError(f"FakeShop: total must not be negative, got {total}")
        if latency_s < 0:
            raise ValueError(f"FakeShop: latency must not be negative, got {latency_s}")
        self.total = total
        self.flaky = set(flaky)
        self.latency_s = latency_s
        #: Requests served per ``since_id`` (0 for the first page), failures included.
        self.requests: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeShop:
        """Serve on a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-shop", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (Ctrl-C), then close the socket."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeShop:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def page(self, since_id: int, limit: int) -> list[dict[str, Any]]:
        """The products after ``since_id``, at most ``limit`` of them."""
        first = since_id + 1
        last = min(self.total, since_id + limit)
        return [
            {"id": i, "title": f"Product {i}", "price": f"{(i * 7) % 100 + 0.99:.2f}"} for i in range(first, last + 1)
        ]

    def _count(self, since_id: int) -> int:
        with self._lock:
            self.requests[since_id] += 1
            return self.requests[since_id]


def _handler_for(shop: FakeShop) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(shop.latency_s)  # a thread per request: slow answers do not queue up
            parts = urlsplit(self.path)
            if parts.path != "/products.json":
                self._reply(HTTPStatus.NOT_FOUND, {"errors": "Not Found"})
                return
            query = parse_qs(parts.query)
            try:
                since_id = int(query.get("since_id", ["0"])[0] or 0)
                limit = int(query.get("limit", [str(DEFAULT_LIMIT)])[0])
            except ValueError:
                self._reply(HTTPStatus.BAD_REQUEST, {"errors": "since_id and limit must be integers"})
                return
            if not 1 <= limit <= MAX_LIMIT or since_id < 0:
                self._reply(HTTPStatus.BAD_REQUEST, {"errors": f"limit must be 1..{MAX_LIMIT}, since_id >= 0"})
                return
            if shop._count(since_id) == 1 and since_id in shop.flaky:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"errors": "try again later"})
                return
            self._reply(HTTPStatus.OK, {"products": shop.page(since_id, limit)})

        def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the demo prints its own summary; per-request lines would bury it

    return Handler


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Serve the fake shop in the foreground (for docker-compose or a second terminal)."""
    parser = argparse.ArgumentParser(description="A fake shop API serving products page by page.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--total", type=int, default=237)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every answer waits (default 0)")
    args = parser.parse_args(argv)
    # As PID 1 in a container, SIGTERM's default action is ignored; make `docker stop` end it at once.
    signal.signal(signal.SIGTERM, _interrupt)
    shop = FakeShop(args.total, host=args.host, port=args.port, latency_s=args.latency)
    print(f"fake shop: {args.total} products at {shop.url}/products.json", flush=True)
    shop.serve_forever()


if __name__ == "__main__":
    main()
