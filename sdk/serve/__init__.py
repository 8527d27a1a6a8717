"""Serve an app's functions over HTTP with Inngest's SDK protocol (reference/inngest-protocol.md §2-4).

``serve(client)`` returns an ASGI app; ``serve_wsgi(client)`` a WSGI app. Either answers on whatever
path it is mounted at::

    from starlette.applications import Starlette
    from starlette.routing import Route
    app = Starlette(routes=[Route("/api/inngest", stepq.serve(client))])        # or FastAPI:
    app.add_route("/api/inngest", stepq.serve(client), methods=["GET", "POST", "PUT"])
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app, {"/api/inngest": stepq.serve_wsgi(client)})

- ``POST ?fnId=<app>-<fn>&stepId=step|<step key>`` runs the function once (``stepq.invocation.invoke``)
  with the request's event(s), memo and context, and answers 206 with opcodes, 200 with the return
  value, or 500 with ``{name, message, stack}`` and ``X-Inngest-No-Retry``; ``Retry-After`` (whole
  seconds) when the function asked for it. ``probe=trust`` answers an empty 200 after the signature
  check. When the request says ``use_api``, the events and memo are fetched from the API first.
- ``PUT`` syncs the app: posts the functions' configs to ``<api>/fn/register`` and answers
  ``{"message", "modified"}`` (500 with the API's error).
- ``GET`` describes the app (introspection, schema ``2024-05-24``); more when the request is signed.

Production mode (the default) checks ``X-Inngest-Signature`` on every POST (401 when missing, bad
or over 5 minutes old), tries the fallback key after the primary, and signs its answers with the
key that matched. Dev mode (``dev=True`` or ``INNGEST_DEV=1``) checks nothing and signs nothing.

Every answer is JSON and carries ``X-Inngest-SDK: stepq:v<version>`` and ``X-Inngest-Req-Version: 2``.
Error bodies never carry a traceback, except the function's own error's ``stack``.

Modules, one job each: ``asgi`` and ``wsgi`` (the adapters and ``serve``/``serve_wsgi``),
``handler`` (signature check and dispatch), ``run`` (POST), ``sync`` (PUT), ``introspection``
(GET), ``call`` (the call request's body), ``served_functions``, ``settings`` (arguments and
environment), ``api_client`` (calls to the API), ``messages`` (request/answer shapes, SDK headers)
and ``thread_bridge`` (async code from a WSGI thread).
"""

from .asgi import ServeApp, serve
from .handler import ServeHandler
from .messages import SDK_NAME, SDK_VERSION, HandlerRequest, HandlerResponse
from .settings import ServeOptions, ServeSettings
from .wsgi import ServeWsgiApp, serve_wsgi

__all__ = [
    "SDK_NAME",
    "SDK_VERSION",
    "HandlerRequest",
    "HandlerResponse",
    "ServeApp",
    "ServeHandler",
    "ServeOptions",
    "ServeSettings",
    "ServeWsgiApp",
    "serve",
    "serve_wsgi",
]
