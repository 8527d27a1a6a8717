"""Serve an app's functions over HTTP with Inngest's SDK protocol (reference/inngest-protocol.md §2-4).

``serve(client)`` returns an ASGI app; ``serve_wsgi(client)`` a WSGI app. Either answers on whatever
path it is mounted at::

    from starlette.applications import Starlette
    from starlette.routing import Route
    app = Starlette(routes=[Route("/api/inngest", sdk.serve(client))])        # or FastAPI:
    app.add_route("/api/inngest", sdk.serve(client), methods=["GET", "POST", "PUT"])
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app, {"/api/inngest": sdk.serve_wsgi(client)})

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
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import http
import importlib.metadata
import json
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import structlog

from stepq.client import FUNCTION_FAILED, NO_EVENT_KEY, Client
from stepq.engine import ExecutionRequest, ExecutionResult, FunctionFailed, FunctionReturned, StepsReported
from stepq.errors import FunctionConfigError, InvalidEventError
from stepq.event import Event
from stepq.function import MAX_RETRIES, Function
from stepq.invocation import invoke
from stepq.signing import (
    SIGNATURE_HEADER,
    SignatureError,
    check_signing_key,
    hash_signing_key,
    matching_key,
    sign,
)
from stepq.triggers import TriggerEvent

log = structlog.get_logger("stepq.serve")

DEFAULT_SERVE_PATH = "/api/inngest"
DEFAULT_API_BASE_URL = "http://127.0.0.1:8288"
#: The request version this SDK speaks (optimized parallelism: coalesced fan-in).
REQUEST_VERSION = "2"
INTROSPECTION_SCHEMA = "2024-05-24"
#: Bodies over this are refused (413) before parsing; the executor moves big state to ``use_api``.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Timeout of calls to the API (sync, ``use_api`` reads).
API_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: What the introspection advertises: no in-band sync, no Connect.
CAPABILITIES = {"trust_probe": "v1"}

_EVENT_FIELDS = ("name", "data", "id", "ts", "v", "user")
_DISCOVERY_STEP = "step"


def _version() -> str:
    try:
        return importlib.metadata.version("stepq")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


SDK_VERSION = _version()
SDK_NAME = f"stepq:v{SDK_VERSION}"


@dataclasses.dataclass(slots=True)
class HandlerRequest:
    """One HTTP request, independent of the server interface (ASGI or WSGI)."""

    method: str
    #: The path the request arrived at (mount prefix included).
    path: str
    query: Mapping[str, str]
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    #: ``scheme://host[:port]`` the request was addressed to.
    origin: str


@dataclasses.dataclass(slots=True)
class HandlerResponse:
    status: int
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def header_list(self) -> list[tuple[str, str]]:
        return [*self.headers.items(), ("Content-Length", str(len(self.body)))]


class _Refusal(Exception):
    """A request answered with an error before (or instead of) running anything."""

    def __init__(
        self, status: int, code: str, message: str, *, name: str = "", body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.name = name or "".join(part.capitalize() for part in code.split("_")) + "Error"
        self.body = body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def _dev_from_env() -> tuple[bool, str | None]:
    """(dev mode, dev server URL) from ``INNGEST_DEV``: set and not 0/false means dev; a URL also
    names the API to sync with."""
    raw = _env("INNGEST_DEV")
    if raw is None or raw.lower() in ("0", "false", "no", "off"):
        return False, None
    return True, raw if raw.startswith(("http://", "https://")) else None


def _normalize_origin(origin: str) -> str:
    origin = origin.strip().rstrip("/")
    if "://" not in origin:
        origin = f"https://{origin}"  # as Inngest's SDKs read a bare host
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        raise FunctionConfigError(
            f"serve: serve_origin must be a URL origin like https://app.example.com, got {origin!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _seconds(delta: dt.timedelta) -> str:
    """``Retry-After`` as whole seconds, rounded up, at least 1 (the executor's floor)."""
    return str(max(1, math.ceil(delta.total_seconds())))


class ServeHandler:
    """The protocol, independent of ASGI/WSGI: ``await handler.handle(request)`` -> response."""

    def __init__(
        self,
        client: Client,
        functions: Sequence[Function] | None = None,
        *,
        serve_origin: str | None = None,
        serve_path: str = DEFAULT_SERVE_PATH,
        signing_key: str | None = None,
        signing_key_fallback: str | None = None,
        api_base_url: str | None = None,
        dev: bool | None = None,
        framework: str = "asgi",
    ) -> None:
        if not isinstance(client, Client):
            raise FunctionConfigError(f"serve: expected an sdk.Client, got {type(client).__name__}")
        self.client = client
        env_dev, dev_url = _dev_from_env()
        self.dev = env_dev if dev is None else bool(dev)
        self.framework = framework
        origin = serve_origin if serve_origin is not None else _env("INNGEST_SERVE_ORIGIN")
        self.serve_origin = _normalize_origin(origin) if origin else None
        if not isinstance(serve_path, str) or not serve_path.strip():
            raise FunctionConfigError("serve: serve_path must be a non-empty path like /api/inngest")
        self.serve_path = "/" + serve_path.strip().strip("/")
        api = (
            api_base_url
            or _env("INNGEST_API_BASE_URL")
            or _env("INNGEST_BASE_URL")
            or (dev_url if self.dev else None)
            or DEFAULT_API_BASE_URL
        )
        if not api.startswith(("http://", "https://")):
            raise FunctionConfigError(f"serve: api_base_url must be an http(s) URL, got {api!r}")
        self.api_base_url = api.rstrip("/")
        key = signing_key if signing_key is not None else _env("INNGEST_SIGNING_KEY")
        fallback = signing_key_fallback if signing_key_fallback is not None else _env("INNGEST_SIGNING_KEY_FALLBACK")
        self.signing_key = check_signing_key(key, what="signing_key") if key else None
        self.signing_key_fallback = check_signing_key(fallback, what="signing_key_fallback") if fallback else None
        if not self.dev and self.signing_key is None:
            raise FunctionConfigError(
                "serve: production mode needs a signing key to check the executor's signatures; pass "
                "signing_key= or set INNGEST_SIGNING_KEY (or use dev mode: dev=True or INNGEST_DEV=1)"
            )
        self._explicit = None if functions is None else self._with_failure_handlers(functions)
        self._variants: dict[tuple[str, int], tuple[Function, Function]] = {}

    # -- functions ---------------------------------------------------------------------------------

    def _with_failure_handlers(self, functions: Sequence[Function]) -> dict[str, Function]:
        if isinstance(functions, Function):
            functions = [functions]
        served: dict[str, Function] = {}
        known = self.client.functions
        for fn in functions:
            if not isinstance(fn, Function):
                raise FunctionConfigError(f"serve: functions must be sdk.Function objects, got {fn!r}")
            if fn.app_id != self.client.app_id:
                raise FunctionConfigError(
                    f"serve: function {fn.id!r} belongs to app {fn.app_id!r}, not {self.client.app_id!r}"
                )
            found = [fn]
            failure = known.get(f"{fn.id}-failure")
            if failure is not None and any(
                isinstance(t, TriggerEvent) and t.event == FUNCTION_FAILED for t in failure.triggers
            ):
                found.append(failure)
            for item in found:
                other = served.get(item.slug)
                if other is not None and other is not item:
                    raise FunctionConfigError(f"serve: two functions share the id {item.slug!r}")
                served[item.slug] = item
        return served

    def functions(self) -> dict[str, Function]:
        """The served functions by slug (``<app_id>-<id>``): those given, or the client's current ones."""
        if self._explicit is not None:
            return self._explicit
        return {fn.slug: fn for fn in self.client.functions.values()}

    def _find(self, fn_id: str) -> Function:
        served = self.functions()
        fn = served.get(fn_id) or served.get(f"{self.client.app_id}-{fn_id}")
        if fn is None:
            names = sorted(served)
            listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            raise _Refusal(
                500,
                "function_not_found",
                f"function {fn_id!r} is not served by app {self.client.app_id!r} (it serves: {listed or 'nothing'})",
                name="FunctionNotFoundError",
            )
        return fn

    def _with_max_attempts(self, fn: Function, max_attempts: int | None) -> Function:
        """The function with the executor's ``max_attempts`` (it knows the synced config) when it differs."""
        if max_attempts is None or max_attempts == fn.max_attempts or not 1 <= max_attempts <= MAX_RETRIES + 1:
            return fn
        key = (fn.slug, max_attempts)
        cached = self._variants.get(key)
        if cached is not None and cached[0] is fn:
            return cached[1]
        variant = dataclasses.replace(fn, retries=max_attempts - 1)
        if len(self._variants) < 10_000:
            self._variants[key] = (fn, variant)
        return variant

    # -- entry point -------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "dev" if self.dev else "cloud"

    def base_headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Inngest-SDK": SDK_NAME,
            "X-Inngest-Req-Version": REQUEST_VERSION,
            "X-Inngest-Framework": self.framework,
        }

    async def handle(self, request: HandlerRequest) -> HandlerResponse:
        """Answer one request; never raises."""
        validated: str | None = None
        try:
            validated = self._validated_key(request)
            if request.method == "POST":
                response = await self._post(request, validated)
            elif request.method == "PUT":
                response = await self._put(request)
            elif request.method in ("GET", "HEAD"):
                response = self._get(request, validated)
            else:
                response = self._refusal(
                    _Refusal(405, "method_not_allowed", f"{request.method} is not supported; use GET, POST or PUT")
                )
                response.headers["Allow"] = "GET, POST, PUT"
        except _Refusal as refusal:
            response = self._refusal(refusal)
        except Exception as exc:  # a bug in the handler: log it in full, answer without the traceback
            log.exception("serve.internal_error", method=request.method, error=repr(exc))
            response = self._refusal(
                _Refusal(500, "internal_error", f"stepq's serve handler failed: {type(exc).__name__}: {exc}")
            )
        response.headers = {**self.base_headers(), **response.headers}
        if validated is not None:
            response.headers[SIGNATURE_HEADER] = sign(response.body, validated, int(time.time()))
        if request.method == "HEAD":
            response.body = b""
        return response

    def _refusal(self, refusal: _Refusal) -> HandlerResponse:
        body = refusal.body or {"name": refusal.name, "message": refusal.message, "code": refusal.code}
        headers = {}
        if refusal.status >= 500:
            headers["X-Inngest-No-Retry"] = "false"
        return HandlerResponse(refusal.status, _dumps(body), headers)

    def _validated_key(self, request: HandlerRequest) -> str | None:
        """The signing key that signed the request, or None (dev mode, or no valid signature).

        POST needs one in production mode: missing or bad signatures answer 401 there.
        """
        if self.dev:
            return None
        header = request.headers.get(SIGNATURE_HEADER.lower())
        try:
            return matching_key(request.body, header, (self.signing_key, self.signing_key_fallback), int(time.time()))
        except SignatureError as exc:
            if request.method == "POST":
                log.warning("serve.unauthorized", reason=exc.reason, error=exc.message)
                raise _Refusal(
                    401,
                    "unauthorized",
                    f"Unauthorized: {exc.message}",
                    name="UnauthorizedError",
                ) from None
            return None

    # -- POST: run a function ----------------------------------------------------------------------

    async def _post(self, request: HandlerRequest, validated: str | None) -> HandlerResponse:
        probe = request.query.get("probe")
        if probe:
            if probe != "trust":
                raise _Refusal(500, "unsupported_probe", f"unsupported probe {probe!r}")
            return HandlerResponse(200, b"null")
        fn_id = request.query.get("fnId")
        if not fn_id:
            raise _Refusal(500, "query_param_missing", "the fnId query parameter is missing")
        fn = self._find(fn_id)
        step_id = request.query.get("stepId") or _DISCOVERY_STEP
        parsed = _parse_call(request.body)
        if parsed.use_api:
            events_raw, steps = await self._fetch_state(parsed.run_id)
            parsed.events = events_raw
            parsed.steps = steps
        events = [_event(raw, f"events[{i}]") for i, raw in enumerate(parsed.events or [])]
        if parsed.event is not None:
            event = _event(parsed.event, "event")
        elif events:
            event = events[0]
        else:
            raise _Refusal(500, "malformed_request", "the request carries no event")
        execution = ExecutionRequest(
            event=event,
            events=events or [event],
            steps=parsed.steps,
            run_id=parsed.run_id,
            attempt=parsed.attempt,
            stack=parsed.stack,
            target_step=None if step_id == _DISCOVERY_STEP else step_id,
            disable_immediate_execution=parsed.disable_immediate_execution,
        )
        fn = self._with_max_attempts(fn, parsed.max_attempts)
        result = await invoke(fn, execution, raw_request=request)
        return self._result(fn, parsed.run_id, result)

    def _result(self, fn: Function, run_id: str, result: ExecutionResult) -> HandlerResponse:
        for warning in result.warnings:
            log.warning("serve.function_warning", function=fn.slug, run_id=run_id, warning=warning)
        if isinstance(result, StepsReported):
            headers = {"X-Inngest-No-Retry": "false"}
            if result.retry_after is not None:
                headers["Retry-After"] = _seconds(result.retry_after)
            return HandlerResponse(206, _dumps([op.to_dict() for op in result.opcodes]), headers)
        if isinstance(result, FunctionReturned):
            return HandlerResponse(200, _dumps(result.value))
        assert isinstance(result, FunctionFailed)
        error = {
            "name": str(result.error.get("name") or "Error"),
            "message": str(result.error.get("message") or ""),
            "stack": str(result.error.get("stack") or ""),
        }
        headers = {"X-Inngest-No-Retry": "false" if result.retriable else "true"}
        if result.retry_after is not None and result.retriable:
            headers["Retry-After"] = _seconds(result.retry_after)
        log.info(
            "serve.function_failed", function=fn.slug, run_id=run_id, error=error["name"], retriable=result.retriable
        )
        return HandlerResponse(500, _dumps(error), headers)

    async def _fetch_state(self, run_id: str) -> tuple[list[Any], dict[str, Any]]:
        """The run's events and memo from the API, for a request that said ``use_api``."""
        base = f"{self.api_base_url}/v0/runs/{quote(run_id, safe='')}"
        try:
            async with httpx.AsyncClient(timeout=API_TIMEOUT) as http_client:
                batch, actions = await asyncio.gather(
                    self._api_get(http_client, f"{base}/batch"), self._api_get(http_client, f"{base}/actions")
                )
        except httpx.HTTPError as exc:
            raise _Refusal(
                500, "use_api_failed", f"could not fetch run {run_id}'s state from the API at {base}: {exc!r}"
            ) from None
        if not isinstance(batch, list) or not batch:
            raise _Refusal(500, "use_api_failed", f"the API at {base}/batch answered no events for run {run_id}")
        if not isinstance(actions, dict):
            raise _Refusal(500, "use_api_failed", f"the API at {base}/actions did not answer an object")
        return batch, actions

    async def _api_get(self, http_client: httpx.AsyncClient, url: str) -> Any:
        response = await self._api_send(http_client, "GET", url)
        if response.status_code >= 400:
            raise _Refusal(
                500, "use_api_failed", f"the API answered {response.status_code} to GET {url}: {_snippet(response)}"
            )
        try:
            return response.json()
        except ValueError:
            raise _Refusal(500, "use_api_failed", f"the API answered GET {url} with a body that is not JSON") from None

    async def _api_send(self, http_client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A call to the API, authorized in production mode; retried with the fallback key on 401/403."""
        headers = {
            "X-Inngest-SDK": SDK_NAME,
            "X-Inngest-Req-Version": REQUEST_VERSION,
            "User-Agent": SDK_NAME,
            **kwargs.pop("headers", {}),
        }
        env = _env("INNGEST_ENV")
        if env:
            headers["X-Inngest-Env"] = env
        keys = [] if self.dev else [k for k in (self.signing_key, self.signing_key_fallback) if k]
        if keys:
            headers["Authorization"] = f"Bearer {hash_signing_key(keys[0])}"
        response = await http_client.request(method, url, headers=headers, **kwargs)
        if response.status_code in (401, 403) and len(keys) > 1:
            headers["Authorization"] = f"Bearer {hash_signing_key(keys[1])}"
            response = await http_client.request(method, url, headers=headers, **kwargs)
        return response

    # -- PUT: sync -----------------------------------------------------------------------------------

    def app_url(self, request: HandlerRequest) -> str:
        """The URL the executor calls: the serve origin (or the request's) and the serve path."""
        return (self.serve_origin or request.origin) + self.serve_path

    def register_payload(self, url: str) -> dict[str, Any]:
        """Inngest's sync payload (protocol §4.2) for the served functions at ``url``."""
        functions = self.functions()
        if not functions:
            raise _Refusal(500, "no_functions", f"app {self.client.app_id!r} serves no functions")
        return {
            "url": url,
            "v": "0.1",
            "deployType": "ping",
            "sdk": SDK_NAME,
            "framework": self.framework,
            "appName": self.client.app_id,
            "capabilities": dict(CAPABILITIES),
            "functions": [_function_config(fn, url) for fn in functions.values()],
        }

    async def _put(self, request: HandlerRequest) -> HandlerResponse:
        kind = request.headers.get("x-inngest-server-kind")
        if kind in ("dev", "cloud") and kind != self.mode:
            message = f"sync refused: it comes from a {kind} server but this app runs in {self.mode} mode"
            log.error("serve.sync_refused", reason=message)
            return HandlerResponse(400, _dumps({"message": message, "modified": False, "code": "server_kind_mismatch"}))
        if request.path and (request.path.rstrip("/") or "/") != self.serve_path:
            log.warning(
                "serve.path_mismatch",
                serve_path=self.serve_path,
                request_path=request.path,
                hint="the URL registered uses serve_path: pass serve_path= where the app is mounted",
            )
        url = self.app_url(request)
        try:
            payload = self.register_payload(url)
        except _Refusal as refusal:
            return HandlerResponse(500, _dumps({"message": refusal.message, "modified": False}))
        register_url = f"{self.api_base_url}/fn/register"
        params = {"deployId": request.query["deployId"]} if request.query.get("deployId") else None
        headers = {"Content-Type": "application/json", "X-Inngest-Framework": self.framework}
        if kind in ("dev", "cloud"):
            headers["X-Inngest-Expected-Server-Kind"] = kind
        try:
            async with httpx.AsyncClient(timeout=API_TIMEOUT) as http_client:
                response = await self._api_send(
                    http_client, "POST", register_url, content=_dumps(payload), params=params, headers=headers
                )
        except httpx.HTTPError as exc:
            message = f"could not reach the API at {register_url}: {exc!r}"
            log.error("serve.sync_failed", error=message)
            return HandlerResponse(500, _dumps({"message": message, "modified": False}))
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400 or not isinstance(answer, dict):
            detail = answer.get("error") if isinstance(answer, dict) else None
            message = (
                f"the API at {register_url} refused the sync ({response.status_code}): "
                f"{detail if isinstance(detail, str) and detail else _snippet(response)}"
            )
            log.error("serve.sync_failed", error=message)
            return HandlerResponse(500, _dumps({"message": message, "modified": False}))
        modified = bool(answer.get("modified"))
        log.info(
            "serve.synced", app=self.client.app_id, url=url, functions=len(payload["functions"]), modified=modified
        )
        return HandlerResponse(200, _dumps({"message": "Successfully registered", "modified": modified}))

    # -- GET: introspection --------------------------------------------------------------------------

    def _get(self, request: HandlerRequest, validated: str | None) -> HandlerResponse:
        kind = request.headers.get("x-inngest-server-kind")
        if kind in ("dev", "cloud") and kind != self.mode:
            return HandlerResponse(403, b"{}")
        return HandlerResponse(200, _dumps(self.introspection(request, validated)))

    def introspection(self, request: HandlerRequest, validated: str | None) -> dict[str, Any]:
        """Protocol §4.3; the details only for a signed request (production mode)."""
        has_event_key = bool(self.client.event_key) and self.client.event_key != NO_EVENT_KEY
        body: dict[str, Any] = {
            "schema_version": INTROSPECTION_SCHEMA,
            "authentication_succeeded": None,
            "function_count": len(self.functions()),
            "has_event_key": has_event_key,
            "has_signing_key": self.signing_key is not None,
            "has_signing_key_fallback": self.signing_key_fallback is not None,
            "mode": self.mode,
            "capabilities": dict(CAPABILITIES),
        }
        if self.dev:
            return body
        if validated is None:
            body["authentication_succeeded"] = False if request.headers.get(SIGNATURE_HEADER.lower()) else None
            return body
        body.update(
            authentication_succeeded=True,
            api_origin=self.api_base_url,
            app_id=self.client.app_id,
            env=_env("INNGEST_ENV"),
            event_api_origin=(self.client.event_api_url or self.api_base_url).rstrip("/"),
            event_key_hash=hashlib.sha256(self.client.event_key.encode()).hexdigest() if has_event_key else None,
            framework=self.framework,
            sdk_language="py",
            sdk_version=SDK_VERSION,
            serve_origin=self.serve_origin,
            serve_path=self.serve_path,
            signing_key_hash=hash_signing_key(self.signing_key) if self.signing_key else None,
            signing_key_fallback_hash=(
                hash_signing_key(self.signing_key_fallback) if self.signing_key_fallback else None
            ),
        )
        return body


@dataclasses.dataclass(slots=True)
class _Call:
    run_id: str
    attempt: int
    disable_immediate_execution: bool
    max_attempts: int | None
    stack: list[str]
    steps: dict[str, Any]
    event: Any
    events: list[Any] | None
    use_api: bool


def _malformed(message: str) -> _Refusal:
    return _Refusal(500, "malformed_request", f"malformed request body: {message}")


def _parse_call(body: bytes) -> _Call:
    """The call request's fields (protocol §2.3); errors name the field."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _malformed(f"not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise _malformed("expected a JSON object")
    ctx = payload.get("ctx")
    if not isinstance(ctx, dict):
        raise _malformed("ctx: expected an object")
    run_id = ctx.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise _malformed("ctx.run_id: expected a non-empty string")
    attempt = ctx.get("attempt", 0)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise _malformed(f"ctx.attempt: expected a non-negative integer, got {attempt!r}")
    disable = ctx.get("disable_immediate_execution", False)
    if not isinstance(disable, bool):
        raise _malformed("ctx.disable_immediate_execution: expected a boolean")
    max_attempts = ctx.get("max_attempts")
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)):
        raise _malformed(f"ctx.max_attempts: expected an integer, got {max_attempts!r}")
    stack_obj = ctx.get("stack") or {}
    stack = stack_obj.get("stack") if isinstance(stack_obj, dict) else None
    stack = stack or []
    if not isinstance(stack, list) or not all(isinstance(k, str) for k in stack):
        raise _malformed("ctx.stack.stack: expected a list of step keys")
    use_api = payload.get("use_api") is True or ctx.get("use_api") is True
    steps = payload.get("steps")
    if steps is None:
        steps = {}
    if not isinstance(steps, dict):
        raise _malformed("steps: expected an object of step keys to memoized values")
    events = payload.get("events")
    if events is not None and not isinstance(events, list):
        raise _malformed("events: expected a list")
    event = payload.get("event")
    if not use_api and event is None and not events:
        raise _malformed("event: missing")
    return _Call(
        run_id=run_id,
        attempt=attempt,
        disable_immediate_execution=disable,
        max_attempts=max_attempts if isinstance(max_attempts, int) and max_attempts > 0 else None,
        stack=stack,
        steps=steps,
        event=event,
        events=events,
        use_api=use_api,
    )


def _event(raw: Any, where: str) -> Event:
    """An event from the wire; fields stepq does not model (``meta``...) are dropped."""
    if isinstance(raw, dict):
        raw = {k: raw[k] for k in _EVENT_FIELDS if k in raw}
    try:
        return Event.from_dict(raw, where=where)
    except InvalidEventError as exc:
        raise _malformed(str(exc)) from None


def _function_config(fn: Function, url: str) -> dict[str, Any]:
    config = fn.config()
    out: dict[str, Any] = {
        "id": fn.slug,
        "name": fn.name,
        "triggers": config["triggers"],
        "steps": {
            "step": {
                "id": _DISCOVERY_STEP,
                "name": _DISCOVERY_STEP,
                "runtime": {"type": "http", "url": f"{url}?fnId={_quote(fn.slug)}&stepId={_DISCOVERY_STEP}"},
                "retries": {"attempts": fn.retries},
            }
        },
        # stepq's own extension (Inngest ignores it): the wait between attempts.
        "backoff": config["backoff"],
    }
    if config["cancel"]:
        out["cancel"] = config["cancel"]
    if config["timeouts"]:
        out["timeouts"] = config["timeouts"]
    return out


def _quote(value: str) -> str:
    return quote(value, safe="-_.:~")


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip()
    return (text[:300] + "...") if len(text) > 300 else (text or "(empty body)")


def _first_values(query_string: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(query_string, keep_blank_values=True).items() if v}


# -- ASGI ------------------------------------------------------------------------------------------

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
        scheme = scope.get("scheme") or "http"
        host = headers.get("host")
        if not host:
            server = scope.get("server") or ("localhost", None)
            host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        root_path = scope.get("root_path") or ""
        path = scope.get("path") or "/"
        if root_path and not path.startswith(root_path):
            path = root_path + path
        request = HandlerRequest(
            method=scope.get("method", "GET").upper(),
            path=path,
            query=_first_values((scope.get("query_string") or b"").decode("latin-1")),
            headers=headers,
            body=b"".join(chunks),
            origin=f"{scheme}://{host}",
        )
        if too_large:
            response = HandlerResponse(
                413, _dumps({"message": f"request body over {MAX_BODY_BYTES} bytes", "code": "body_too_large"})
            )
            response.headers = self.handler.base_headers()
        else:
            response = await self.handler.handle(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.header_list()],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


def serve(
    client: Client,
    functions: Sequence[Function] | None = None,
    *,
    serve_origin: str | None = None,
    serve_path: str = DEFAULT_SERVE_PATH,
    signing_key: str | None = None,
    signing_key_fallback: str | None = None,
    api_base_url: str | None = None,
    dev: bool | None = None,
    framework: str = "asgi",
) -> ServeApp:
    """An ASGI app serving ``functions`` (default: all of the client's, read at each request).

    ``serve_origin`` (``INNGEST_SERVE_ORIGIN``) and ``serve_path`` make the URL registered on sync;
    without an origin, the request's is used. ``signing_key`` (``INNGEST_SIGNING_KEY``) and
    ``signing_key_fallback`` (``INNGEST_SIGNING_KEY_FALLBACK``) check and sign requests in production
    mode, which needs a key. ``dev`` defaults to ``INNGEST_DEV``. ``api_base_url`` is the stepq API
    for syncs and ``use_api`` reads (``INNGEST_API_BASE_URL``, ``INNGEST_BASE_URL``, a URL in
    ``INNGEST_DEV``, else http://127.0.0.1:8288). A failure handler (``<id>-failure``) of a given
    function is served with it.
    """
    return ServeApp(
        ServeHandler(
            client,
            functions,
            serve_origin=serve_origin,
            serve_path=serve_path,
            signing_key=signing_key,
            signing_key_fallback=signing_key_fallback,
            api_base_url=api_base_url,
            dev=dev,
            framework=framework,
        )
    )


# -- WSGI ------------------------------------------------------------------------------------------

T = TypeVar("T")

StartResponse = Callable[..., Any]


def _run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code, in a fresh event loop.

    In a thread that already runs a loop (WSGI called from async code), a helper thread runs it.
    """

    async def main() -> T:
        return await coro

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(main()))
        except BaseException as exc:  # pragma: no cover - handle() does not raise
            errors.append(exc)

    thread = threading.Thread(target=target, name="stepq-serve-wsgi")
    thread.start()
    thread.join()
    if errors:  # pragma: no cover
        raise errors[0]
    return box[0]


class ServeWsgiApp:
    """The WSGI app ``serve_wsgi`` returns: each request runs the protocol core in its own event loop."""

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
        stream = environ.get("wsgi.input")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        response: HandlerResponse | None = None
        if length > MAX_BODY_BYTES:
            response = HandlerResponse(
                413,
                _dumps({"message": f"request body over {MAX_BODY_BYTES} bytes", "code": "body_too_large"}),
                self.handler.base_headers(),
            )
            body = b""
        elif stream is None:
            body = b""
        elif length:
            body = stream.read(length)
        elif environ.get("wsgi.input_terminated"):
            body = stream.read(MAX_BODY_BYTES + 1)
        else:
            body = b""
        if response is None:
            scheme = environ.get("wsgi.url_scheme", "http")
            host = headers.get("host")
            if not host:
                host = f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
            request = HandlerRequest(
                method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
                path=(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/",
                query=_first_values(environ.get("QUERY_STRING", "")),
                headers=headers,
                body=body,
                origin=f"{scheme}://{host}",
            )
            response = _run_sync(self.handler.handle(request))
        phrase = http.HTTPStatus(response.status).phrase
        start_response(f"{response.status} {phrase}", response.header_list())
        return [response.body]


def serve_wsgi(
    client: Client,
    functions: Sequence[Function] | None = None,
    *,
    serve_origin: str | None = None,
    serve_path: str = DEFAULT_SERVE_PATH,
    signing_key: str | None = None,
    signing_key_fallback: str | None = None,
    api_base_url: str | None = None,
    dev: bool | None = None,
    framework: str = "wsgi",
) -> ServeWsgiApp:
    """``serve`` for WSGI servers (Flask, Django, gunicorn sync workers); same options and protocol."""
    return ServeWsgiApp(
        ServeHandler(
            client,
            functions,
            serve_origin=serve_origin,
            serve_path=serve_path,
            signing_key=signing_key,
            signing_key_fallback=signing_key_fallback,
            api_base_url=api_base_url,
            dev=dev,
            framework=framework,
        )
    )
