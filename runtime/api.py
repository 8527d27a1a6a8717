"""The HTTP event API (``stepq api``): Inngest's ``POST /e/{event_key}`` on stepq's ingest.

Routes:

- ``POST /e/{key}``: one event (a JSON object) or a list of up to 5,000. Answers
  ``{"ids": [...], "status": 200}`` with the stored events' ids. Errors answer
  ``{"ids": [], "status": N, "error": "..."}`` and store nothing: 400 for a body that is not JSON or
  an event that is malformed (the message names the field, e.g. ``events[3].data.x``: not an
  object, text with a lone surrogate, ``ts`` outside 0..2^63-1, nesting over 100 levels...), too
  many events or a reserved name (``inngest/``, ``stepq/``); 401 for an unknown key; 413 for an
  event over ``max_event_bytes`` or a body over ``max_request_bytes``; 503 with ``Retry-After``
  when Redis cannot take the batch (it does not answer, is out of memory, read-only, loading...).
  A batch is stored whole or not at all.
- ``GET /health``: 200 when Redis answers a PING, else 503.
- ``POST /fn/register``: an app serving its functions over HTTP syncs them (Inngest's register
  payload); answers ``{"ok": true, "modified": bool}``; 400 naming the bad field or a refused URL
  (``stepq.runtime.app_urls``), 409 when a function id belongs to another app.
- ``GET /v0/runs/{run_id}``: one run as JSON (``stepq.runtime.queries.get_run``), 404 if unknown or
  expired.
- ``GET /v0/runs/{run_id}/timeline``: the run's timeline as JSON (``stepq.runtime.timeline``: every
  step's attempts, sleeps, waits, invokes, parallel groups, flow control), 404 if unknown or expired.
- ``GET /v0/runs/{run_id}/batch`` and ``/actions``: a run's events and step memo, for an SDK told
  ``use_api`` because the state was too large to send.
- ``/ui``: the dashboard (``stepq.runtime.dashboard``; ``/`` redirects there): open to loopback
  clients in dev mode, behind a login with ``STEPQ_DASHBOARD_TOKEN`` or the signing key otherwise.
- ``GET /metrics``: Prometheus metrics (``stepq.runtime.metrics``, ``metrics_state``): the API's counters, and the
  deployment's state read from Redis at scrape time (runs by status, queue depth and age,
  flow-control waits). Open unless ``STEPQ_METRICS_TOKEN`` is set; then it needs
  ``Authorization: Bearer <that token>`` (what Prometheus's ``authorization`` scrape setting
  sends). A separate token, not the signing key: a scraper's credentials can only read metrics.
- Operator actions (``stepq.runtime.actions``), answering JSON: ``POST /v0/runs/{run_id}/cancel``
  (body ``{"reason"}`` optional; 409 when the run had ended), ``POST /v0/runs/{run_id}/replay``,
  ``POST /v0/runs/{run_id}/resume`` (body ``{"step": "<step key or name>"}``), and by filter
  ``POST /v0/runs/cancel`` and ``POST /v0/runs/replay`` (body: ``function``, ``status``, ``since``,
  ``until``, ``event``, ``"dry_run": true`` for the count only, ``cap``; a cancel's ``reason``).
  400 names a bad field, 404 an unknown run, 409 a run that cannot take the action now (it still
  runs, it never started, its function is gone).
- ``GET /v0/runs`` (filtered, paged, or a search), ``GET /v0/functions``, ``GET /v0/events`` and
  ``GET /v0/events/{id}``: the read model (``stepq.runtime.api_reads``); 400 naming a bad parameter.

Event keys come from ``STEPQ_EVENT_KEYS`` (comma-separated) and only send events, as in Inngest.
Everything else an SDK or an operator does (register, read runs, their events and step results)
needs ``Authorization: Bearer <hashed signing key>``; an event key there is refused with 401. In
dev mode (``STEPQ_DEV=1`` or ``stepq api --dev``) any key is accepted and nothing is signed;
outside it, at least one event key must be configured.

Errors never log the request's data: an unexpected exception is logged with its type and route
only (its message or traceback could quote the payload), and answered 500.

Retries and duplicates: the API stores what each request carries, so a request that is retried
after a lost answer stores its events twice (as Inngest's event store does). Runs are not
duplicated when the events carry an ``id``: the ingest starts each function at most once per event
id within 24 h. ``stepq.http_transport.HttpTransport`` gives every event without an id a ULID before
its first attempt and keeps it across retries for exactly that reason.

Why Starlette + uvicorn: this is one JSON endpoint and two reads on an asyncio Redis client.
Starlette is a thin, typed ASGI toolkit (routing, requests, lifespan) whose only dependency is
anyio, which httpx already brings; uvicorn is the reference ASGI server, with no required C
extensions (it speeds up when uvloop/httptools are installed). FastAPI would add pydantic and a
validation layer that would duplicate ``stepq.event.Event.from_dict``, whose messages name the bad
field; aiohttp would bring its own HTTP client and stack alongside httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from stepq.errors import FunctionConfigError, InvalidEventError
from stepq.event import MAX_EVENT_DEPTH, Event
from stepq.jsonvalue import json_type
from stepq.secret_env import secret_from_env, signing_key_from_env
from stepq.signing import bearer_matches
from stepq.tracing import normalized_traceparent

from . import api_reads, metrics, metrics_state
from .actions import BULK_CAP, DEFAULT_REASON, ActionRefused, Actions
from .app_urls import ENV as ALLOWED_APP_HOSTS_ENV
from .app_urls import AllowedHosts, AppUrlPolicy, AppUrlRefused
from .codec import unpack
from .connection import RedisClient, connect, open_redis
from .dashboard import DashboardAuth, create_dashboard
from .ingest import RESERVED_PREFIXES, Ingest
from .inngest_config import checksum, parse_register
from .keys import events as run_events_key
from .keys import memo as run_memo_key
from .limits import Limits, MiB
from .queries import RunFilter, get_run
from .redis_errors import ANY, unavailable_reason
from .registry import FunctionOwnedError, Registry
from .store import RunStore
from .timeline import get_timeline

#: Inngest's ``MaxEvents``: events per request.
MAX_EVENTS = 5000
#: Inngest's ``DefaultMaxEventSize``.
DEFAULT_MAX_EVENT_BYTES = 512 * 1024
#: Cap on a whole request body (a batch of events), read before any parsing.
DEFAULT_MAX_REQUEST_BYTES = 32 * MiB
DEFAULT_PORT = 8288
#: Seconds a client is told to wait (``Retry-After``) when Redis cannot take a write right now.
RETRY_AFTER_S = 1

log = structlog.get_logger("stepq.api")


@dataclasses.dataclass(frozen=True, slots=True)
class ApiSettings:
    """What ``create_app`` needs; ``from_env`` reads it from ``STEPQ_*`` variables."""

    event_keys: tuple[str, ...] = ()
    dev: bool = False
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Authenticates SDK calls (register, run reads) outside dev mode.
    signing_key: str | None = None
    #: ``STEPQ_ALLOWED_APP_HOSTS``: when set, registered app URLs must be on these hosts or networks.
    allowed_app_hosts: AllowedHosts | None = None
    #: ``STEPQ_DASHBOARD_TOKEN``: logs operators into the dashboard (as does the signing key).
    dashboard_token: str | None = None
    #: ``STEPQ_SESSION_SECRET``: signs dashboard sessions; derived from the token or key when unset.
    session_secret: str | None = None
    #: ``STEPQ_METRICS_TOKEN``: when set, ``GET /metrics`` needs it as a bearer token.
    metrics_token: str | None = None

    @classmethod
    def from_env(cls, *, dev: bool | None = None) -> ApiSettings:
        """``STEPQ_EVENT_KEYS`` (comma-separated), ``STEPQ_DEV`` (1/true/yes),
        ``STEPQ_MAX_EVENT_BYTES``, ``STEPQ_MAX_REQUEST_BYTES``, ``STEPQ_SIGNING_KEY``,
        ``STEPQ_ALLOWED_APP_HOSTS``, ``STEPQ_DASHBOARD_TOKEN``, ``STEPQ_SESSION_SECRET``,
        ``STEPQ_METRICS_TOKEN``; ``dev=True`` overrides ``STEPQ_DEV``. Each secret (the event keys,
        the signing key, the tokens, the session secret) may come from a file instead, named by the
        same variable with ``_FILE`` added (``stepq.secret_env``)."""
        keys = tuple(k.strip() for k in (secret_from_env("STEPQ_EVENT_KEYS") or "").split(",") if k.strip())
        env_dev = os.environ.get("STEPQ_DEV", "").strip().lower() in ("1", "true", "yes", "on")
        return cls(
            event_keys=keys,
            dev=bool(dev) or env_dev,
            max_event_bytes=_positive_env("STEPQ_MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES),
            max_request_bytes=_positive_env("STEPQ_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES),
            signing_key=signing_key_from_env(),
            allowed_app_hosts=AllowedHosts.parse(os.environ.get(ALLOWED_APP_HOSTS_ENV, "")),
            dashboard_token=secret_from_env("STEPQ_DASHBOARD_TOKEN"),
            session_secret=secret_from_env("STEPQ_SESSION_SECRET"),
            metrics_token=secret_from_env("STEPQ_METRICS_TOKEN"),
        )

    def create_app(self, redis_url: str) -> Starlette:
        """``create_app`` with these settings."""
        return create_app(
            redis_url,
            event_keys=self.event_keys,
            dev=self.dev,
            max_event_bytes=self.max_event_bytes,
            max_request_bytes=self.max_request_bytes,
            signing_key=self.signing_key,
            allowed_app_hosts=self.allowed_app_hosts,
            dashboard_token=self.dashboard_token,
            session_secret=self.session_secret,
            metrics_token=self.metrics_token,
        )


def _positive_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer number of bytes, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class _Refused(Exception):
    """A request answered with an error status (and message) instead of a result."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Json(Response):
    """A JSON answer, always ASCII: an error message quoting odd input can never fail to encode."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":"), default=str).encode()


Handler = Callable[[Request], Awaitable[Response]]
#: Builds a route's error body from a status and a message.
ErrorShape = Callable[[int, str], dict[str, Any]]


def _guarded(route: str, shape: ErrorShape) -> Callable[[Handler], Handler]:
    """Answer a handler's refusals with ``shape``, a Redis that cannot take the request with 503 and
    ``Retry-After``, and anything unexpected with 500, logging only its type and the route."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except _Refused as refused:
                return _Json(shape(refused.status, refused.message), refused.status)
            except Exception as exc:
                reason = unavailable_reason(exc)
                if reason is not None:
                    # The reason, not the error's text: a failed command's text can quote its arguments.
                    log.warning("api.redis_unavailable", route=route, reason=reason, error_type=type(exc).__name__)
                    message = f"Redis {reason}; retry in a moment"
                    return _Json(shape(503, message), 503, headers={"Retry-After": str(RETRY_AFTER_S)})
                log.error("api.unexpected_error", route=route, error_type=type(exc).__name__)
                return _Json(shape(500, f"internal error ({type(exc).__name__}); see the API's log"), 500)

        return guarded

    return wrap


def _event_error(status: int, message: str) -> dict[str, Any]:
    return {"ids": [], "status": status, "error": message}


def _register_error(status: int, message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _plain_error(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "error": message}


def create_app(
    redis_url: str,
    *,
    event_keys: Iterable[str] = (),
    dev: bool = False,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_request_bytes: int | None = None,
    limits: Limits | None = None,
    signing_key: str | None = None,
    allowed_app_hosts: AllowedHosts | None = None,
    url_policy: AppUrlPolicy | None = None,
    dashboard_token: str | None = None,
    session_secret: str | None = None,
    metrics_token: str | None = None,
) -> Starlette:
    """The event API as an ASGI app; its lifespan opens and closes the Redis connection.

    ``allowed_app_hosts`` restricts where registered apps may live (``stepq.runtime.app_urls``);
    ``url_policy`` replaces the whole check (e.g. with another resolver).
    ``metrics_token``: when set, ``GET /metrics`` needs it as a bearer token (else it is open).
    The dashboard, under ``/ui``, takes ``dashboard_token`` or ``signing_key`` at its login form
    outside dev mode, and signs its sessions with ``session_secret`` (derived from them when None).

    Raises ``ValueError`` when not in dev mode and no event key is configured: such a server
    could only ever answer 401.
    """
    keys = tuple(k for k in event_keys if k)
    if not dev and not keys:
        raise ValueError("no event keys configured: set STEPQ_EVENT_KEYS=key1,key2 or run in dev mode (--dev)")
    if max_event_bytes <= 0:
        raise ValueError(f"max_event_bytes must be positive, got {max_event_bytes}")
    request_cap = max(max_request_bytes or DEFAULT_MAX_REQUEST_BYTES, max_event_bytes)
    encoded_keys = tuple(k.encode() for k in keys)
    policy = url_policy or AppUrlPolicy(allowed=allowed_app_hosts, redis_url=redis_url)
    dashboard = create_dashboard(
        DashboardAuth(dev=dev, token=dashboard_token, signing_key=signing_key, session_secret=session_secret)
    )
    metrics.enable()

    def use(app: Starlette, redis: RedisClient) -> None:
        store = RunStore(redis, limits or Limits.from_env())
        app.state.redis = redis
        app.state.ingest = Ingest(redis, store, Registry(redis, store.scripts))
        dashboard.state.redis, dashboard.state.ingest = redis, app.state.ingest
        app.state.actions = Actions(app.state.ingest)

    async def reopen(app: Starlette) -> None:
        """Redis was unreachable at start: find out what it is once it answers, then use that."""
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            try:
                redis = await open_redis(redis_url)
            except ANY:
                delay = min(delay * 2, 2.0)
                continue
            stand_in = app.state.redis
            use(app, redis)
            await stand_in.aclose()
            return

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        reopening = None
        try:
            use(app, await open_redis(redis_url))  # a cluster, or one Redis; sets the shard count
        except ANY:
            # Serve (503s, the login page) meanwhile, on a plain client that reports Redis down.
            use(app, connect(redis_url))
            reopening = asyncio.create_task(reopen(app))
        try:
            yield
        finally:
            if reopening is not None:
                reopening.cancel()
                await asyncio.gather(reopening, return_exceptions=True)
            await app.state.redis.aclose()

    def known_key(key: str) -> bool:
        given = key.encode()
        # Compare against every key so the time taken does not say which one nearly matched.
        return bool(given) and any([hmac.compare_digest(given, k) for k in encoded_keys])

    @_guarded("events", _event_error)
    async def receive_events(request: Request) -> Response:
        started = time.perf_counter()
        if not dev and not known_key(request.path_params["key"]):
            raise _Refused(401, "event key not recognised: use one of STEPQ_EVENT_KEYS (or run the API with --dev)")
        body = await _read_body(request, request_cap)
        events = _parse_events(body, max_event_bytes)
        ingest: Ingest = request.app.state.ingest
        try:
            # the sender's span, as Inngest's event API takes it: an invalid header is ignored (W3C)
            ids = await ingest.send(events, traceparent=normalized_traceparent(request.headers.get("traceparent")))
        except InvalidEventError as exc:
            raise _Refused(400, str(exc)) from None
        log.debug("api.events", count=len(ids), ms=round((time.perf_counter() - started) * 1000, 2))
        metrics.events_received(len(ids))
        return _Json({"ids": ids, "status": 200})

    async def counted_events(request: Request) -> Response:
        response = await receive_events(request)
        if response.status_code != 200:
            metrics.event_request_refused(response.status_code)
        return response

    async def metrics_endpoint(request: Request) -> Response:
        if metrics_token is not None and not _bearer_is(request.headers.get("authorization"), metrics_token):
            return _Json(
                _plain_error(401, "metrics need Authorization: Bearer <STEPQ_METRICS_TOKEN>"),
                401,
                headers={"WWW-Authenticate": 'Bearer realm="stepq metrics"'},
            )
        try:
            body = metrics_state.render(await metrics_state.collect_state(request.app.state.redis))
        except Exception as exc:
            # the counters are still worth a scrape; stepq_state_read_ok 0 says the gauges are missing
            log.warning("api.metrics_state_failed", error_type=type(exc).__name__)
            body = metrics_state.render(state_failed=True)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        try:
            await request.app.state.redis.ping()
        except Exception as exc:
            return _Json({"status": 503, "redis": "unavailable", "error": str(exc)}, 503)
        return _Json({"status": 200, "redis": "ok"})

    def require_signing_key(request: Request, what: str) -> None:
        """Let through dev mode and the hashed signing key; refuse anything else, saying why."""
        if dev:
            return
        authorization = request.headers.get("authorization")
        if signing_key is not None and bearer_matches(authorization, [signing_key]):
            return
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer" and known_key(token.strip()):
            raise _Refused(  # 401 as for any other wrong key (Inngest's answer), with the reason
                401,
                f"an event key only sends events; {what} needs Authorization: Bearer <hashed signing key>",
            )
        if signing_key is None:
            raise _Refused(
                401, f"{what} needs the signing key: none is configured (set STEPQ_SIGNING_KEY, or use dev mode)"
            )
        raise _Refused(401, f"{what} needs Authorization: Bearer <hashed signing key>")

    @_guarded("run", _plain_error)
    async def run(request: Request) -> Response:
        require_signing_key(request, "reading a run")
        run_id = request.path_params["run_id"]
        view = await get_run(request.app.state.redis, run_id)
        if view is None:
            raise _Refused(404, f"no run {run_id!r} (unknown, or expired)")
        return _Json(view.to_dict())

    @_guarded("run_timeline", _plain_error)
    async def run_timeline(request: Request) -> Response:
        require_signing_key(request, "reading a run")
        run_id = request.path_params["run_id"]
        timeline = await get_timeline(request.app.state.redis, run_id)
        if timeline is None:
            raise _Refused(404, f"no run {run_id!r} (unknown, or expired)")
        return _Json(timeline.to_dict())

    @_guarded("runs", _plain_error)
    async def runs(request: Request) -> Response:
        require_signing_key(request, "reading runs")
        try:
            return _Json(await api_reads.runs_page(request.app.state.redis, request.query_params))
        except api_reads.BadParameter as exc:
            raise _Refused(400, str(exc)) from None

    @_guarded("functions", _plain_error)
    async def functions(request: Request) -> Response:
        require_signing_key(request, "reading functions")
        return _Json(await api_reads.functions(request.app.state.redis))

    @_guarded("events_list", _plain_error)
    async def events_list(request: Request) -> Response:
        require_signing_key(request, "reading events")
        try:
            return _Json(await api_reads.events_page(request.app.state.redis, request.query_params))
        except api_reads.BadParameter as exc:
            raise _Refused(400, str(exc)) from None

    @_guarded("event", _plain_error)
    async def event(request: Request) -> Response:
        require_signing_key(request, "reading an event")
        event_id = request.path_params["event_id"]
        found = await api_reads.event(request.app.state.redis, event_id)
        if found is None:
            raise _Refused(404, f"no event {event_id!r} (unknown, or expired)")
        return _Json(found)

    @_guarded("register", _register_error)
    async def register(request: Request) -> Response:
        require_signing_key(request, "registering an app")
        body = await _read_body(request, request_cap)
        try:
            payload = _loads(body)
            app_id, configs = parse_register(payload)
        except (ValueError, FunctionConfigError) as exc:
            raise _Refused(400, f"invalid app config: {exc}") from None
        for i, config in enumerate(configs):
            try:
                await policy.check(config["url"])
            except AppUrlRefused as exc:
                raise _Refused(
                    400,
                    f"invalid app config: functions[{i}].steps.step.runtime.url: {exc.url} is refused: {exc.reason}",
                ) from None
        # The app's runs live within this API's limits, whichever process writes to them.
        run_limits = request.app.state.ingest.store.limits.to_config()
        configs = [{**config, "limits": run_limits} for config in configs]
        try:
            modified = await Registry(request.app.state.redis).sync_app(app_id, configs, checksum(payload))
        except FunctionOwnedError as exc:
            raise _Refused(409, str(exc)) from None
        log.info("api.registered", app=app_id, functions=len(configs), modified=modified)
        return _Json({"ok": True, "modified": modified, "app_id": app_id})

    @_guarded("run_batch", _plain_error)
    async def run_batch(request: Request) -> Response:
        require_signing_key(request, "reading a run's events")
        blob = await request.app.state.redis.get(run_events_key(request.path_params["run_id"]))
        if blob is None:
            raise _Refused(404, "no such run")
        return _Json(unpack(blob))

    @_guarded("run_actions", _plain_error)
    async def run_actions(request: Request) -> Response:
        require_signing_key(request, "reading a run's step results")
        memo = await request.app.state.redis.hgetall(run_memo_key(request.path_params["run_id"]))
        return _Json({k.decode(): unpack(v) for k, v in memo.items()})

    # -- operator actions (runtime/actions.py) ------------------------------------------------------

    async def action_body(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
        """The request's JSON object (an empty body is {}); 400 naming a field not in ``allowed``."""
        body = await _read_body(request, request_cap)
        if not body.strip():
            return {}
        try:
            payload = _loads(body)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        if not isinstance(payload, dict):
            raise _Refused(400, f"body: expected a JSON object, got {json_type(payload)}")
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise _Refused(400, f"body.{unknown[0]}: unknown field; the fields are {', '.join(sorted(allowed))}")
        return payload

    def text_field(payload: dict[str, Any], name: str) -> str | None:
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            raise _Refused(400, f"body.{name}: expected text, got {json_type(value)}")
        return value

    async def act(request: Request, what: str, action: Callable[[Actions], Awaitable[Any]]) -> Response:
        require_signing_key(request, what)
        try:
            done = await action(request.app.state.actions)
        except ActionRefused as refused:
            raise _Refused(refused.status, str(refused)) from None
        return _Json(done.to_dict())

    @_guarded("run_cancel", _plain_error)
    async def run_cancel(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        require_signing_key(request, "cancelling a run")
        reason = text_field(await action_body(request, frozenset({"reason"})), "reason") or DEFAULT_REASON
        done = await request.app.state.actions.cancel(run_id, reason)
        if done.outcome == "missing":
            raise _Refused(404, f"no run {run_id!r} (unknown, or expired)")
        if not done.cancelled:
            raise _Refused(409, f"run {run_id} has ended already")
        return _Json(done.to_dict())

    @_guarded("run_replay", _plain_error)
    async def run_replay(request: Request) -> Response:
        require_signing_key(request, "replaying a run")
        await action_body(request, frozenset())
        return await act(request, "replaying a run", lambda a: a.replay(request.path_params["run_id"]))

    @_guarded("run_resume", _plain_error)
    async def run_resume(request: Request) -> Response:
        require_signing_key(request, "resuming a run")
        step = text_field(await action_body(request, frozenset({"step"})), "step")
        if not step:
            raise _Refused(400, "body.step: give the key or the name of the step to resume from")
        return await act(request, "resuming a run", lambda a: a.resume(request.path_params["run_id"], step))

    async def bulk(
        request: Request, action: str, extra: frozenset[str] = frozenset()
    ) -> tuple[RunFilter, bool, int, dict[str, Any]]:
        """A bulk request's filter, dry_run and cap (and its body, for ``extra`` fields)."""
        require_signing_key(request, f"{action} by filter")
        fields = ("function", "status", "since", "until", "event")
        payload = await action_body(request, frozenset({*fields, "dry_run", "cap"}) | extra)
        try:
            flt = RunFilter.parse(
                function=text_field(payload, "function"),
                status=text_field(payload, "status"),
                since=text_field(payload, "since"),
                until=text_field(payload, "until"),
                event=text_field(payload, "event"),
            )
        except ValueError as exc:
            raise _Refused(400, f"body.{exc}") from None
        dry_run, cap = payload.get("dry_run", False), payload.get("cap", BULK_CAP)
        if not isinstance(dry_run, bool):
            raise _Refused(400, f"body.dry_run: expected true or false, got {json_type(dry_run)}")
        if not isinstance(cap, int) or isinstance(cap, bool):
            raise _Refused(400, f"body.cap: expected an integer, got {json_type(cap)}")
        return flt, dry_run, cap, payload

    @_guarded("runs_cancel", _plain_error)
    async def runs_cancel(request: Request) -> Response:
        flt, dry_run, cap, payload = await bulk(request, "cancelling runs", frozenset({"reason"}))
        reason = text_field(payload, "reason") or DEFAULT_REASON
        return await act(
            request, "cancelling runs", lambda a: a.bulk_cancel(flt, reason=reason, cap=cap, dry_run=dry_run)
        )

    @_guarded("runs_replay", _plain_error)
    async def runs_replay(request: Request) -> Response:
        flt, dry_run, cap, _ = await bulk(request, "replaying runs")
        return await act(request, "replaying runs", lambda a: a.bulk_replay(flt, cap=cap, dry_run=dry_run))

    return Starlette(
        routes=[
            Route("/v0/runs/cancel", runs_cancel, methods=["POST"]),
            Route("/v0/runs/replay", runs_replay, methods=["POST"]),
            Route("/v0/runs/{run_id}/cancel", run_cancel, methods=["POST"]),
            Route("/v0/runs/{run_id}/replay", run_replay, methods=["POST"]),
            Route("/v0/runs/{run_id}/resume", run_resume, methods=["POST"]),
            Route("/e/{key}", counted_events, methods=["POST"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/fn/register", register, methods=["POST"]),
            Route("/v0/runs/{run_id}/batch", run_batch, methods=["GET"]),
            Route("/v0/runs/{run_id}/actions", run_actions, methods=["GET"]),
            Route("/v0/runs/{run_id}/timeline", run_timeline, methods=["GET"]),
            Route("/v0/runs/{run_id}", run, methods=["GET"]),
            Route("/", _to_dashboard, methods=["GET"]),
            Mount("/ui", app=dashboard),
            Route("/v0/runs", runs, methods=["GET"]),
            Route("/v0/functions", functions, methods=["GET"]),
            Route("/v0/events", events_list, methods=["GET"]),
            Route("/v0/events/{event_id}", event, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _bearer_is(authorization: str | None, token: str) -> bool:
    """Whether ``authorization`` is ``Bearer <token>`` (compared in constant time)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _to_dashboard(request: Request) -> Response:
    """``/`` is the dashboard's."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/", 307)


async def _read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > cap:
        raise _Refused(413, f"request body is {int(declared)} bytes; the limit is {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise _Refused(413, f"request body is over the limit of {cap} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Refused(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(body: bytes, limit: str = "") -> Any:
    """The body's JSON; ValueError (naming ``body``) when it is not JSON or nests too deeply to parse."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"body: JSON nested too deeply to parse{limit}") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ValueError(f"body: not valid JSON ({exc})") from None


def _parse_events(body: bytes, max_event_bytes: int) -> list[Event]:
    """Decode and validate a body of one event or a list; any problem refuses the whole request."""
    try:
        raw = _loads(body, f" (an event's data may nest at most {MAX_EVENT_DEPTH} levels)")
    except ValueError as exc:
        raise _Refused(400, str(exc)) from None
    if isinstance(raw, dict):
        items: Sequence[Any] = [raw]
        where = ["event"]
    elif isinstance(raw, list):
        items = raw
        where = [f"events[{i}]" for i in range(len(items))]
    else:
        raise _Refused(400, f"body: expected an event object or a list of events, got {json_type(raw)}")
    if not items:
        raise _Refused(400, "body: the list of events is empty")
    if len(items) > MAX_EVENTS:
        raise _Refused(400, f"body: {len(items)} events; at most {MAX_EVENTS} per request")
    if len(body) > max_event_bytes:
        # Only a body over the limit can hold an event over it; measure each event then.
        for label, item in zip(where, items, strict=True):
            try:
                # UTF-8 bytes; a lone surrogate is counted, not an error (it is refused below, by name)
                size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode(errors="surrogatepass"))
            except RecursionError:
                continue  # refused below, naming the field, by the depth check
            if size > max_event_bytes:
                raise _Refused(413, f"{label}: {size} bytes; an event may be at most {max_event_bytes} bytes")
    events = []
    for label, item in zip(where, items, strict=True):
        try:
            event = Event.from_dict(item, where=label)
        except InvalidEventError as exc:
            raise _Refused(400, str(exc)) from None
        if event.name.startswith(RESERVED_PREFIXES):
            raise _Refused(400, f"{label}.name: names starting with 'inngest/' or 'stepq/' are reserved")
        events.append(event)
    return events


class ApiServer:
    """Runs the API under uvicorn in a background thread (for ``stepq dev`` and tests).

    ``start()`` returns once the server accepts connections; ``url`` is its origin. Port 0 picks a
    free port.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: ApiSettings | None = None,
        app: Any = None,
    ) -> None:
        self.app = app or (settings or ApiSettings.from_env()).create_app(redis_url)
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the event API server stopped while starting (see its log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the event API server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
