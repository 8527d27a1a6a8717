"""``serve(client)``: the serve protocol as an ASGI app (Starlette, FastAPI, any ASGI server)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Unpack

from ..client import Client
from ..function import Function
from .handler import ServeHandler
from .messages import MAX_BODY_BYTES, HandlerRequest, body_too_large, first_values
from .settings import ServeOptions, ServeSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ServeApp:
    """The ASGI app ``serve`` returns; ``handler`` is the protocol core."""

    def __init__(self, handler: ServeHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        chunks: list[bytes] = []
        size = 0
        too_large = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                too_large = True
                break
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if too_large:
            response = body_too_large(self.handler.base_headers())
        else:
            response = await self.handler.handle(_request(scope, headers, b"".join(chunks)))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.header_list()],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


def _request(scope: Scope, headers: dict[str, str], body: bytes) -> HandlerRequest:
    scheme = scope.get("scheme") or "http"
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
    root_path = scope.get("root_path") or ""
    path = scope.get("path") or "/"
    if root_path and not path.startswith(root_path):
        path = root_path + path
    return HandlerRequest(
        method=scope.get("method", "GET").upper(),
        path=path,
        query=first_values((scope.get("query_string") or b"").decode("latin-1")),
        headers=headers,
        body=body,
        origin=f"{scheme}://{host}",
    )


def serve(client: Client, functions: Sequence[Function] | None = None, **options: Unpack[ServeOptions]) -> ServeApp:
    """An ASGI app serving ``functions`` (default: all of the client's, read at each request).

    ``options`` (``ServeOptions``; what is left out comes from the client, else the environment):
    ``serve_origin`` (``INNGEST_SERVE_ORIGIN``) and ``serve_path`` make the URL registered on sync;
    without an origin, the request's is used. ``signing_key`` (``INNGEST_SIGNING_KEY``) and
    ``signing_key_fallback`` (``INNGEST_SIGNING_KEY_FALLBACK``) check and sign requests in production
    mode, which needs a key. ``dev`` defaults to ``INNGEST_DEV``. ``api_base_url`` is the stepq API
    for syncs and ``use_api`` reads (``INNGEST_API_BASE_URL``, ``INNGEST_BASE_URL``, a URL in
    ``INNGEST_DEV``, else http://127.0.0.1:8288). ``framework`` (default ``asgi``) is what the app
    reports. A failure handler (``<id>-failure``) of a given function is served with it.
    """
    return ServeApp(ServeHandler(client, functions, ServeSettings.for_client(client, options, framework="asgi")))
