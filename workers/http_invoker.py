"""Invoking functions that apps serve over HTTP, speaking Inngest's SDK protocol.

One POST per invocation to the URL the function registered, ``stepId=step`` for discovery or the
planned step's key. The answer is read by the protocol (reference/inngest-protocol.md §3): 206 with
opcodes, 200 with the return value, 500 with the error and ``X-Inngest-No-Retry``; ``Retry-After``
is honoured within [1 s, 24 h]; a 2xx without ``X-Inngest-SDK`` did not come from an SDK. Requests
are signed when a signing key is configured (production mode).

Every new connection goes through ``stepq.runtime.app_urls``: the URL's host is resolved, each address
checked (no link-local or metadata address, not the Redis server, within ``STEPQ_ALLOWED_APP_HOSTS``
when set) and the connection made to a checked address. A refused URL fails the step attempt with
``AppUrlRefused``, not retried: it is refused until the app registers another URL or the setting
changes.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import httpcore
import httpx
import structlog

from stepq.durations import parse_iso
from stepq.engine import ExecutionResult, FunctionFailed, FunctionReturned, StepsReported
from stepq.opcodes import Opcode
from stepq.replay import ExecutionRequest
from stepq.runtime.app_urls import AppUrlPolicy, AppUrlRefused, CheckedNetworkBackend
from stepq.signing import canonical_json, sign
from stepq.tracing import trace_headers

from .remote import RemoteFunction

log = structlog.get_logger("stepq.http")

#: Inngest's ``MaxSDKRequestBodySize``: above it, the state is left for the SDK to fetch (``use_api``).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Inngest's ``MaxSDKResponseBodySize``.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MIN_RETRY_AFTER = dt.timedelta(seconds=1)
MAX_RETRY_AFTER = dt.timedelta(hours=24)
#: Seconds an idle connection to an app stays in the pool (below every common server's idle timeout).
KEEPALIVE_S = 1.0


class HttpInvoker:
    """Calls served functions with pooled connections; every failure becomes a ``FunctionFailed``."""

    def __init__(
        self,
        *,
        signing_key: str | None = None,
        timeout_s: float = 2 * 3600,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        url_policy: AppUrlPolicy | None = None,
    ) -> None:
        """``url_policy``: where apps may be called; by default ``AppUrlPolicy.from_env()`` (the
        ``STEPQ_ALLOWED_APP_HOSTS`` setting, and the Redis at ``STEPQ_REDIS_URL``)."""
        self.signing_key = signing_key
        self.timeout_s = timeout_s
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.url_policy = url_policy or AppUrlPolicy.from_env()
        # An idle connection is reused for 1 s at most: servers close idle ones after a few seconds
        # (uvicorn 5 s, gunicorn 2 s), and a request sent on one the app just closed fails with a
        # ReadError that costs the step an attempt it never ran (seen after a worker was paused).
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_S)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=limits,
            transport=_checked_transport(self.url_policy, limits),
            # No HTTP(S)_PROXY from the environment: a proxy would connect where the check cannot see.
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def invoke(self, fn: Any, request: ExecutionRequest) -> ExecutionResult:
        assert isinstance(fn, RemoteFunction), "the HTTP invoker runs functions registered over HTTP"
        body = self.body(fn, request)
        url = _with_query(fn.url, fnId=fn.slug, stepId=request.target_step or "step")
        headers = {
            "Content-Type": "application/json",
            "X-Run-ID": request.run_id,
            "X-Inngest-Req-Version": "2",
            "X-Inngest-Step-ID": request.target_step or "step",
            "X-Inngest-Server-Kind": "cloud" if self.signing_key else "dev",
            # the attempt's span (current when tracing is on): the app's own spans continue it
            **trace_headers(),
        }
        if self.signing_key:
            headers["X-Inngest-Signature"] = sign(body, self.signing_key, int(time.time()))
        try:
            async with self._client.stream("POST", url, content=body, headers=headers) as response:
                raw = await self._read(response)
                return self.interpret(fn, response.status_code, response.headers, raw)
        except AppUrlRefused as exc:
            return _failed("AppUrlRefused", f"{fn.slug}: {fn.url} is refused: {exc.reason}", retriable=False)
        except _TooLarge as exc:
            return _failed("OutputTooLarge", str(exc), retriable=False)
        except httpx.TimeoutException:
            return _failed("StepTimeout", f"{fn.slug}: no answer from {fn.url} within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return _failed("HttpInvokeError", f"{fn.slug}: request to {fn.url} failed: {exc!r}")

    def body(self, fn: RemoteFunction, request: ExecutionRequest) -> bytes:
        """The call request (protocol §2.3); the memo and events are left out when too large."""
        ctx: dict[str, Any] = {
            "fn_id": fn.slug,
            "run_id": request.run_id,
            "step_id": "step",
            "attempt": request.attempt,
            "max_attempts": fn.max_attempts,
            "disable_immediate_execution": request.disable_immediate_execution,
            "use_api": False,
            "stack": {"stack": list(request.stack), "current": len(request.stack)},
        }
        payload: dict[str, Any] = {
            "event": request.event.to_dict(),
            "events": [e.to_dict() for e in request.events],
            "steps": dict(request.steps),
            "ctx": ctx,
            "version": 2,
            "use_api": False,
        }
        # Canonical JSON (RFC 8785), as Inngest's executor sends: SDKs verify signatures over it.
        encoded = canonical_json(payload)
        if len(encoded) > self.max_request_bytes:
            payload["steps"] = {}
            payload["use_api"] = ctx["use_api"] = True
            encoded = canonical_json(payload)
            if len(encoded) > self.max_request_bytes:
                payload["events"] = []
                encoded = canonical_json(payload)
        return encoded

    async def _read(self, response: httpx.Response) -> bytes:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise _TooLarge(f"response body over {self.max_response_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def interpret(self, fn: RemoteFunction, status: int, headers: httpx.Headers, raw: bytes) -> ExecutionResult:
        """Read an SDK's answer by the protocol's rules."""
        no_retry = headers.get("x-inngest-no-retry", "").lower() == "true"
        retry_after = _retry_after(headers.get("retry-after"))
        from_sdk = "x-inngest-sdk" in headers
        if status == 201 and from_sdk:  # a streamed answer: the real one is wrapped in the body
            try:
                wrapped = json.loads(raw)
                inner = wrapped.get("body")
                body = inner if isinstance(inner, bytes | str) else json.dumps(inner)
                return self.interpret(
                    fn,
                    int(wrapped["status"]),
                    httpx.Headers({**headers, **(wrapped.get("headers") or {})}),
                    body.encode() if isinstance(body, str) else body,
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                return _failed("InvalidResponse", f"{fn.slug}: a streamed answer that is not a JSON envelope")
        if 200 <= status < 300 and not from_sdk:
            return _failed("NotAnSDKResponse", f"{fn.slug}: {fn.url} answered {status} without an X-Inngest-SDK header")
        try:
            value = json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError):
            snippet = raw[:200].decode(errors="replace")
            return _failed(
                "InvalidResponse", f"{fn.slug}: {fn.url} answered {status} with a body that is not JSON: {snippet!r}"
            )
        if status == 200:
            return FunctionReturned(value)
        if status == 206:
            items = value if isinstance(value, list) else [value] if isinstance(value, dict) else None
            if not items:
                return _failed("InvalidResponse", f"{fn.slug}: a 206 answer without opcodes")
            try:
                opcodes = [Opcode.from_dict(item) for item in items]
            except (ValueError, TypeError, AttributeError) as exc:
                return _failed("InvalidResponse", f"{fn.slug}: unreadable opcode in a 206 answer: {exc}")
            return StepsReported(opcodes, retry_after=retry_after, no_retry=no_retry)
        if not from_sdk:
            if headers.get("x-inngest-sdk-handled"):  # an SDK refused the call (e.g. a bad signature)
                detail = raw[:300].decode(errors="replace")
                return _failed(
                    "RequestRefused", f"{fn.slug}: the SDK at {fn.url} refused the call with {status}: {detail}"
                )
            return _failed(
                "UpstreamError", f"{fn.slug}: {fn.url} answered {status} (not from an SDK)", retry_after=retry_after
            )
        error = value if isinstance(value, dict) and ("message" in value or "name" in value) else {}
        return FunctionFailed(
            {
                "name": str(error.get("name") or "Error"),
                "message": str(error.get("message") or error.get("error") or f"{fn.url} answered {status}"),
                "stack": str(error.get("stack") or ""),
            },
            retriable=not no_retry,
            retry_after=retry_after,
        )


class _TooLarge(Exception):
    pass


def _checked_transport(policy: AppUrlPolicy, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's own transport, its connection pool rebuilt on the checking network backend.

    httpx has no option for a network backend, so the pool it built is replaced by an equal one
    that has it (httpx's ``_pool`` attribute, unchanged since httpx 0.18; checked below).
    """
    transport = httpx.AsyncHTTPTransport(limits=limits)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("this httpx version builds its transport differently: app URLs could not be checked")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=CheckedNetworkBackend(policy),
    )
    return transport


def _failed(
    name: str, message: str, *, retriable: bool = True, retry_after: dt.timedelta | None = None
) -> FunctionFailed:
    log.warning("http.invoke_failed", error=name, detail=message)
    return FunctionFailed({"name": name, "message": message, "stack": ""}, retriable=retriable, retry_after=retry_after)


def _retry_after(value: str | None) -> dt.timedelta | None:
    """``Retry-After`` as seconds or a date, clamped to [1 s, 24 h] as Inngest does."""
    if not value:
        return None
    value = value.strip()
    delta: dt.timedelta | None = None
    if value.isascii() and value.isdigit() and len(value) <= 7:
        delta = dt.timedelta(seconds=int(value))
    else:
        moment: dt.datetime | None = None
        try:
            moment = parse_iso(value)
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                moment = None
        if moment is not None:
            delta = moment - dt.datetime.now(dt.UTC)
    if delta is None:
        return None
    return min(max(delta, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def _with_query(url: str, **params: str) -> str:
    parts = urlparse(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunparse(parts._replace(query=urlencode(query)))
