"""Who may use the dashboard, and the headers that keep a page from being turned against its user.

- Dev mode (``STEPQ_DEV=1`` / ``--dev``): no login, but only for this machine: the client must be a
  loopback address and the ``Host`` a loopback name (a page elsewhere cannot reach it through DNS
  rebinding). Anything else gets 403 saying why.
- Production: a login form takes the dashboard token (``STEPQ_DASHBOARD_TOKEN``) or the signing key
  (``STEPQ_SIGNING_KEY``), compared in constant time; a success opens a session kept in a signed
  cookie (HttpOnly, SameSite=Strict, Secure over https, with a max age). The session records a
  fingerprint of the credentials, so changing the token or key ends every session.
- Every POST, in either mode, carries the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``, which htmx sends from ``hx-headers``), compared in constant time.
- Every answer carries a Content-Security-Policy that allows no inline script or style, and
  ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

import structlog
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..redis_errors import unavailable_reason

log = structlog.get_logger("stepq.dashboard")

#: How long a login lasts.
DEFAULT_SESSION_MAX_AGE_S = 12 * 3600
SESSION_COOKIE = "stepq_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: Failed logins allowed per client address within ``LOGIN_WINDOW_S``.
LOGIN_FAILURES = 10
LOGIN_WINDOW_S = 60.0
#: A form's body at most (a test event's data is the largest field).
MAX_FORM_BYTES = 1024 * 1024

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]

DEV_REFUSED = (
    "the dashboard runs in dev mode, which is open without login to this machine only (loopback "
    "clients and hosts); to reach it from elsewhere, run the API without --dev and log in with "
    "STEPQ_DASHBOARD_TOKEN"
)


@dataclasses.dataclass(frozen=True, slots=True)
class DashboardAuth:
    """The dashboard's access settings (``ApiSettings`` fills them from the environment)."""

    dev: bool
    #: ``STEPQ_DASHBOARD_TOKEN``: a secret operators log in with.
    token: str | None = None
    #: ``STEPQ_SIGNING_KEY``: accepted at the login form too.
    signing_key: str | None = None
    #: ``STEPQ_SESSION_SECRET``: signs session cookies; derived from the token or key when unset.
    session_secret: str | None = None
    session_max_age_s: int = DEFAULT_SESSION_MAX_AGE_S

    @property
    def credentials(self) -> list[bytes]:
        return [c.encode() for c in (self.token, self.signing_key) if c]

    def secret(self) -> str:
        """The session-signing secret: configured, else an HMAC of the credentials (so that a restart
        keeps sessions), else (dev mode without any) random per process."""
        if self.session_secret:
            return self.session_secret
        if self.credentials:
            material = b"\0".join(self.credentials)
            return hmac.new(material, b"stepq dashboard session v1", hashlib.sha256).hexdigest()
        return secrets.token_hex(32)

    def fingerprint(self, secret: str) -> str:
        """What a session records of the credentials it was opened with."""
        material = b"\0".join(self.credentials)
        return hmac.new(secret.encode(), b"stepq dashboard login\0" + material, hashlib.sha256).hexdigest()[:32]

    def accepts(self, given: str) -> bool:
        """Whether ``given`` is the token or the signing key; every credential is compared (in
        constant time), so timing says neither which one nor how much matched."""
        attempt = given.strip().encode()
        results = [hmac.compare_digest(attempt, c) for c in self.credentials]
        return bool(attempt) and any(results)


class LoginLimiter:
    """A light brake on guessing: at most ``LOGIN_FAILURES`` failed logins per client address per
    ``LOGIN_WINDOW_S``. In memory (per process), bounded in size."""

    def __init__(self, failures: int = LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S, max_clients: int = 10_000):
        self.failures = failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._seen: dict[str, list[float]] = {}

    def blocked(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self._seen.get(client, []) if now - t < self.window_s]
        if recent:
            self._seen[client] = recent
        else:
            self._seen.pop(client, None)
        if len(recent) < self.failures:
            return 0.0
        return max(0.0, self.window_s - (now - recent[0]))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if client not in self._seen and len(self._seen) >= self.max_clients:
            self._seen.clear()  # a flood of addresses: start afresh rather than grow without bound
        self._seen.setdefault(client, []).append(now)


def is_loopback_client(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_host(request: Request) -> bool:
    """Whether the ``Host`` the browser asked for names this machine (no DNS rebinding)."""
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def session_of(request: Request) -> dict[str, Any]:
    session: dict[str, Any] = request.session
    return session


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use."""
    session = session_of(request)
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


class FormTooLarge(ValueError):
    """A form body over ``MAX_FORM_BYTES``."""


async def form_of(request: Request) -> dict[str, str]:
    """A POST's urlencoded form fields (the last value of a repeated field). The dashboard's forms
    are all urlencoded: no multipart parser (and no dependency) is needed."""
    cached = getattr(request.state, "form", None)
    if isinstance(cached, dict):
        return cached
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_FORM_BYTES:
        raise FormTooLarge(f"the form is {size} bytes; at most {MAX_FORM_BYTES}")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise FormTooLarge(f"the form is over {MAX_FORM_BYTES} bytes")
    fields = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    request.state.form = fields
    return fields


async def csrf_ok(request: Request) -> bool:
    """Whether a POST carries the session's CSRF token (header, else form field)."""
    expected = session_of(request).get("csrf")
    if not isinstance(expected, str) or not expected:
        return False
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        try:
            given = (await form_of(request)).get(CSRF_FIELD, "")
        except FormTooLarge:
            return False
    return hmac.compare_digest(given.encode(), expected.encode())


Handler = Callable[[Request], Awaitable[Response]]


def _auth(request: Request) -> DashboardAuth:
    auth: DashboardAuth = request.app.state.auth
    return auth


def logged_in(request: Request) -> bool:
    auth = _auth(request)
    if auth.dev:
        return True
    if not auth.credentials:
        return False
    mark = session_of(request).get("auth")
    expected: str = request.app.state.auth_fingerprint
    return isinstance(mark, str) and hmac.compare_digest(mark.encode(), expected.encode())


def _dev_refusal(request: Request) -> Response | None:
    if _auth(request).dev and not (is_loopback_client(request) and is_loopback_host(request)):
        return PlainTextResponse(DEV_REFUSED, 403)
    return None


async def _answered(handler: Handler, request: Request) -> Response:
    """The handler's answer; a Redis that cannot serve now answers 503 saying so, anything else 500
    (logged by type and path only: an error's text could quote event data)."""
    try:
        return await handler(request)
    except Exception as exc:
        reason = unavailable_reason(exc)
        if reason is not None:
            log.warning("dashboard.redis_unavailable", path=request.url.path, reason=reason)
            return PlainTextResponse(f"Redis {reason}; retry in a moment", 503, headers={"Retry-After": "1"})
        log.error("dashboard.unexpected_error", path=request.url.path, error_type=type(exc).__name__)
        return PlainTextResponse(f"internal error ({type(exc).__name__}); see the API's log", 500)


def page(handler: Handler) -> Handler:
    """A page: needs a session (else a redirect to the login form, or 401 for an htmx request)."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        refused = _dev_refusal(request)
        if refused is not None:
            return refused
        if not logged_in(request):
            if request.headers.get("hx-request"):
                return PlainTextResponse("log in first", 401, headers={"HX-Redirect": login_url(request)})
            return RedirectResponse(login_url(request), 303)
        return await _answered(handler, request)

    return guarded


def action(handler: Handler) -> Handler:
    """An action (a POST): needs a session (401 without) and the session's CSRF token (403 without)."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        refused = _dev_refusal(request)
        if refused is not None:
            return refused
        if not logged_in(request):
            return PlainTextResponse("log in first: this action needs a dashboard session", 401)
        if not await csrf_ok(request):
            return PlainTextResponse("missing or wrong CSRF token: reload the page and try again", 403)
        return await _answered(handler, request)

    return guarded


def public(handler: Handler) -> Handler:
    """The login page and static files: open, except dev mode's loopback rule."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        refused = _dev_refusal(request)
        return refused if refused is not None else await _answered(handler, request)

    return guarded


def login_url(request: Request) -> str:
    root = request.scope.get("root_path", "")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{root}/login?next={quote(target, safe='')}"


def safe_next(root: str, target: str | None) -> str:
    """Where to go after logging in: a path of the dashboard only (no open redirect)."""
    if target and target.startswith(root + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return root + "/"


class Sessions:
    """Signed-cookie sessions, with the ``Secure`` flag when the request came over https: two
    ``SessionMiddleware``s that differ only in it, chosen by the request's scheme."""

    def __init__(self, app: ASGIApp, *, secret: str, max_age: int, path: str) -> None:
        options: dict[str, Any] = {
            "secret_key": secret,
            "session_cookie": SESSION_COOKIE,
            "max_age": max_age,
            "same_site": "strict",
            "path": path,
        }
        self.plain = SessionMiddleware(app, https_only=False, **options)
        self.secure = SessionMiddleware(app, https_only=True, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        https = scope.get("scheme") in ("https", "wss")
        await (self.secure if https else self.plain)(scope, receive, send)


class SecurityHeaders:
    """Adds the CSP, frame and sniffing headers to every answer; HTML is never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in present]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
