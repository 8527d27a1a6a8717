"""``stepq.flask.serve(app, client, functions)``: inngest-py's Flask integration, on stepq's handler.

Code written for Inngest (``inngest.flask.serve(app, client, [fn])``) serves its functions the same
way with ``import stepq.flask``. The route answers Inngest's SDK protocol through
``stepq.serve.serve_wsgi``; production mode, keys and the API URL come from the client. Flask itself
is not imported: the route's view returns the WSGI app, which Flask calls with the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .client import Inngest
from .framework_options import refuse_unsupported
from .function import Function
from .serve import ServeWsgiApp, serve_wsgi
from .serve.settings import DEFAULT_SERVE_PATH


class _FlaskApp(Protocol):
    """What this needs of the app: Flask's ``add_url_rule``."""

    def add_url_rule(
        self, rule: str, endpoint: str | None = ..., view_func: Callable[..., Any] | None = ..., **options: Any
    ) -> None: ...


def serve(
    app: _FlaskApp,
    client: Inngest,
    functions: Sequence[Function],
    *,
    enable_unauthed_sync: bool | None = None,
    public_path: str | None = None,
    serve_origin: str | None = None,
    serve_path: str | None = None,
) -> None:
    """Add the protocol's route (GET, POST, PUT at ``serve_path``, default ``/api/inngest``) to ``app``.

    ``serve_origin`` and ``serve_path`` make the URL registered on sync, as in ``stepq.serve``.
    ``enable_unauthed_sync=False`` and ``public_path`` are refused (stepq does not have them).
    """
    refuse_unsupported("flask.serve", enable_unauthed_sync=enable_unauthed_sync, public_path=public_path)
    path = serve_path or DEFAULT_SERVE_PATH
    wsgi = serve_wsgi(client, list(functions), serve_origin=serve_origin, serve_path=path, framework="flask")

    def inngest_api() -> ServeWsgiApp:
        return wsgi  # Flask calls a WSGI app returned by a view with the request's environ

    app.add_url_rule(path, endpoint="inngest_api", view_func=inngest_api, methods=["GET", "POST", "PUT"])
