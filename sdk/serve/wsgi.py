"""``serve_wsgi(client)``: the serve protocol as a WSGI app (Flask, Django, gunicorn sync workers);
each request runs the protocol core in its own event loop."""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Unpack

from ..client import Client
from ..function import Function
from .handler import ServeHandler
from .messages import MAX_BODY_BYTES, HandlerRequest, HandlerResponse, body_too_large, first_values
from .settings import ServeOptions, ServeSettings
from .thread_bridge import run_sync

StartResponse = Callable[..., Any]


class ServeWsgiApp:
    """The WSGI app ``serve_wsgi`` returns; ``handler`` is the protocol core."""

    def __init__(self, handler: ServeHandler) -> None:
        self.handler = handler

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").lower()] = str(value)
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = str(environ[key])
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        response: HandlerResponse
        if length > MAX_BODY_BYTES:
            response = body_too_large(self.handler.base_headers())
        else:
            response = run_sync(self.handler.handle(_request(environ, headers, _body(environ, length))))
        phrase = http.HTTPStatus(response.status).phrase
        start_response(f"{response.status} {phrase}", response.header_list())
        return [response.body]


def _body(environ: dict[str, Any], length: int) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if length:
        return bytes(stream.read(length))
    if environ.get("wsgi.input_terminated"):
        return bytes(stream.read(MAX_BODY_BYTES + 1))
    return b""


def _request(environ: dict[str, Any], headers: dict[str, str], body: bytes) -> HandlerRequest:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = headers.get("host")
    if not host:
        host = f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    return HandlerRequest(
        method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
        path=(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/",
        query=first_values(environ.get("QUERY_STRING", "")),
        headers=headers,
        body=body,
        origin=f"{scheme}://{host}",
    )


def serve_wsgi(
    client: Client, functions: Sequence[Function] | None = None, **options: Unpack[ServeOptions]
) -> ServeWsgiApp:
    """``serve`` for WSGI servers (Flask, Django, gunicorn sync workers); the same options
    (``ServeOptions``; ``framework`` defaults to ``wsgi``) and protocol."""
    return ServeWsgiApp(ServeHandler(client, functions, ServeSettings.for_client(client, options, framework="wsgi")))
