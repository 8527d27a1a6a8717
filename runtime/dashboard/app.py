"""The dashboard as an ASGI app, mounted by the event API under ``/ui``; login and logout."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from . import auth, pages

HERE = Path(__file__).parent
#: The static files, served from memory (read once): a fixed set, so no path from a request ever
#: reaches the filesystem. Pages link them with ``?v=<digest>``, so they can be cached for long.
STATIC_TYPES = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: Seconds a wrong login waits before its answer (a light brake on guessing, with ``LoginLimiter``).
LOGIN_FAILURE_DELAY_S = 0.3


def templates() -> Jinja2Templates:
    """The pages' templates; autoescaping is on for every one of them (event data and step outputs
    are escaped; no template marks user data safe)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)


class Static:
    """The dashboard's static files, read once, each with a digest of its content."""

    def __init__(self) -> None:
        self.files = {name: (HERE / "static" / name).read_bytes() for name in STATIC_TYPES}
        self.versions = {name: hashlib.sha256(body).hexdigest()[:12] for name, body in self.files.items()}

    async def serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self.files.get(name)
        if body is None:
            return Response("Not Found", 404, media_type="text/plain")
        cache = "public, max-age=31536000, immutable" if request.query_params.get("v") else "no-cache"
        return Response(body, headers={"cache-control": cache, "content-type": STATIC_TYPES[name]})


@auth.public
async def login_page(request: Request) -> Response:
    config: auth.DashboardAuth = request.app.state.auth
    if config.dev or auth.logged_in(request):
        return pages._back(request, "/")
    root = request.scope.get("root_path", "")
    context = {"next": auth.safe_next(root, request.query_params.get("next")), "error": None}
    return pages.render(request, "login.html", context)


@auth.public
async def login(request: Request) -> Response:
    config: auth.DashboardAuth = request.app.state.auth
    limiter: auth.LoginLimiter = request.app.state.login_limiter
    root = request.scope.get("root_path", "")
    try:
        form = await auth.form_of(request)
    except auth.FormTooLarge:
        form = {}
    target = auth.safe_next(root, str(form.get("next", "")))
    client = auth.client_address(request)

    def refuse(message: str, status: int) -> Response:
        return pages.render(request, "login.html", {"next": target, "error": message}, status)

    wait = limiter.blocked(client)
    if wait:
        return refuse(f"too many failed logins: try again in {int(wait) + 1} s", 429)
    if not await auth.csrf_ok(request):
        return refuse("the login form expired: try again", 403)
    if not config.credentials:
        return refuse("no dashboard token is configured: set STEPQ_DASHBOARD_TOKEN on the API", 401)
    if not config.accepts(str(form.get("token", ""))):
        limiter.failed(client)
        await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
        return refuse("wrong token or key", 401)  # never says which of the two it was not
    session = auth.session_of(request)
    session.clear()  # a fresh session (and CSRF token) at every login
    session["auth"] = request.app.state.auth_fingerprint
    auth.csrf_token(request)
    return RedirectResponse(target, 303)


@auth.public
async def logout(request: Request) -> Response:
    if await auth.csrf_ok(request):
        auth.session_of(request).clear()
    return pages._back(request, "/login")


def create_dashboard(config: auth.DashboardAuth, *, path: str = "/ui") -> Starlette:
    """The dashboard app; its ``state`` must get ``redis`` and ``ingest`` (the API's lifespan sets
    them). ``path`` is where it is mounted (its session cookie is scoped to it)."""
    secret = config.secret()
    static = Static()
    app = Starlette(
        routes=[
            Route("/", pages.runs_page, methods=["GET"]),
            Route("/runs", pages.runs_page, methods=["GET"]),
            Route("/runs/table", pages.runs_table, methods=["GET"]),
            Route("/runs/{run_id}", pages.run_page, methods=["GET"]),
            Route("/runs/{run_id}/cancel", pages.cancel_run, methods=["POST"]),
            Route("/runs/{run_id}/replay", pages.replay_run, methods=["POST"]),
            Route("/runs/{run_id}/resume", pages.resume_run, methods=["POST"]),
            Route("/functions", pages.functions_page, methods=["GET"]),
            Route("/events", pages.events_page, methods=["GET"]),
            Route("/events/send", pages.send_event, methods=["POST"]),
            Route("/bulk", pages.bulk_page, methods=["GET"]),
            Route("/bulk", pages.bulk_apply, methods=["POST"]),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/static/{name}", static.serve, methods=["GET"]),
        ],
        middleware=[
            Middleware(auth.SecurityHeaders),
            Middleware(auth.Sessions, secret=secret, max_age=config.session_max_age_s, path=path),
        ],
    )
    app.state.auth = config
    app.state.auth_fingerprint = config.fingerprint(secret)
    app.state.login_limiter = auth.LoginLimiter()
    app.state.templates = templates()
    app.state.static_versions = static.versions
    return app
