"""``stepq.fast_api.serve(app, client, functions)``: inngest-py's FastAPI integration, on stepq's handler.

Code written for Inngest (``inngest.fast_api.serve(app, client, [fn])``) serves its functions the
same way with ``import stepq.fast_api``. The routes answer Inngest's SDK protocol (see
``stepq.serve``); production mode, keys and the API URL come from the client (``stepq.Inngest``).
Works with any Starlette application, FastAPI's included; FastAPI itself is not imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .client import Inngest
from .framework_options import refuse_unsupported
from .function import Function
from .serve import serve as serve_asgi
from .serve.settings import DEFAULT_SERVE_PATH


class _RoutedApp(Protocol):
    """What this needs of the app: Starlette's (and so FastAPI's) ``add_route``."""

    def add_route(self, path: str, route: Any, methods: list[str] | None = ...) -> None: ...


def serve(
    app: _RoutedApp,
    client: Inngest,
    functions: Sequence[Function],
    *,
    enable_unauthed_sync: bool | None = None,
    public_path: str | None = None,
    serve_origin: str | None = None,
    serve_path: str | None = None,
    streaming: object | None = None,
) -> None:
    """Add the protocol's route (GET, POST, PUT at ``serve_path``, default ``/api/inngest``) to ``app``.

    ``serve_origin`` and ``serve_path`` make the URL registered on sync, as in ``stepq.serve``.
    ``enable_unauthed_sync=False``, ``public_path`` and streaming are refused (stepq does not have
    them); ``enable_unauthed_sync=True`` and ``Streaming.DISABLE`` are what stepq does anyway.
    """
    refuse_unsupported(
        "fast_api.serve", enable_unauthed_sync=enable_unauthed_sync, public_path=public_path, streaming=streaming
    )
    path = serve_path or DEFAULT_SERVE_PATH
    handler = serve_asgi(client, list(functions), serve_origin=serve_origin, serve_path=path, framework="fast_api")
    app.add_route(path, handler, methods=["GET", "POST", "PUT"])
