"""Sending events over HTTP to the event API (``stepq api``), for apps that do not reach Redis.

``Client("shop", event_api_url="http://127.0.0.1:8288", event_key="...")`` uses this transport.

Retries never start a function twice for one event: a send is prepared once (every event without
an ``id`` gets a fresh ULID as its ``id``) and the same bytes are posted on each attempt. The
runtime starts each function at most once per event ``id`` within 24 h, so an attempt whose answer
was lost (a timeout, a 502 from a proxy after the API stored the events) and is then retried stores
the events again but starts no second run. The ids returned are those of the stored events (like
Inngest's internal event ids); a function sees the event's ``id`` field, its idempotency key.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from .errors import InvalidEventError, StepqError
from .event import Event
from .ids import new_ulid
from .tracing import trace_headers

#: Attempts per send: the first and two retries.
ATTEMPTS = 3
#: Seconds before the first retry; doubles for each next one (with up to 25 % jitter).
BACKOFF_S = 0.2
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class EventApiError(StepqError):
    """The event API refused or could not take a send; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class EventKeyError(EventApiError):
    """401: the event API does not know this event key."""


class EventRejectedError(EventApiError, InvalidEventError):
    """400 or 413: an event is malformed, reserved or too large; the message names it. Nothing was stored."""


class EventApiUnavailableError(EventApiError):
    """Every attempt failed with a network error or a 5xx answer. Events may or may not be stored;
    sending the same events again (with their ids) starts no function twice."""


class PreparedSend:
    """One logical send: the request body, fixed before the first attempt and reused on retries."""

    __slots__ = ("body", "count")

    def __init__(self, events: Sequence[Event]) -> None:
        payload = [_with_id(e).to_dict() for e in events]
        self.count = len(payload)
        self.body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _with_id(event: Event) -> Event:
    """The event with an ``id`` (its idempotency key): a new ULID when the sender set none."""
    if event.id:
        return event
    return Event(event.name, event.data, new_ulid(), event.ts, event.v, event.user)


class HttpTransport:
    """``stepq.transport.EventTransport`` over HTTP: ``POST {url}/e/{event_key}`` with retries.

    Retries (``ATTEMPTS`` in all, with backoff) on network errors and 5xx answers only; a 4xx
    answer raises at once: ``EventRejectedError`` (400/413, also an ``InvalidEventError``),
    ``EventKeyError`` (401) or ``EventApiError``.
    """

    def __init__(
        self,
        url: str,
        event_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise StepqError(f"event_api_url must start with http:// or https://, got {url!r}")
        if attempts < 1:
            raise StepqError(f"attempts must be at least 1, got {attempts}")
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/e/{quote(event_key, safe='')}"
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._headers = {"content-type": "application/json", "user-agent": "stepq-py"}
        self._async: httpx.AsyncClient | None = None
        self._sync: httpx.Client | None = None

    # -- EventTransport ------------------------------------------------------------------------

    async def send(self, events: Sequence[Event]) -> list[str]:
        prepared = PreparedSend(events)
        for attempt in range(1, self.attempts + 1):
            try:
                return await self.attempt(prepared)
            except _Retryable as exc:
                if attempt == self.attempts:
                    raise self._gave_up(prepared, exc) from exc.cause
                await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    def send_sync(self, events: Sequence[Event]) -> list[str]:
        prepared = PreparedSend(events)
        for attempt in range(1, self.attempts + 1):
            try:
                return self.attempt_sync(prepared)
            except _Retryable as exc:
                if attempt == self.attempts:
                    raise self._gave_up(prepared, exc) from exc.cause
                time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self.close()

    def close(self) -> None:
        """Close the synchronous client (``aclose`` does too)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    # -- one attempt -----------------------------------------------------------------------------

    async def attempt(self, prepared: PreparedSend) -> list[str]:
        """Post ``prepared`` once. Raises ``_Retryable`` for a network error or a 5xx answer."""
        if self._async is None:
            self._async = httpx.AsyncClient(timeout=self.timeout, headers=self._headers)
        try:
            response = await self._async.post(self.endpoint, content=prepared.body, headers=trace_headers())
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}", exc) from exc
        return self._read(response, prepared)

    def attempt_sync(self, prepared: PreparedSend) -> list[str]:
        """``attempt`` for synchronous code."""
        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout, headers=self._headers)
        try:
            response = self._sync.post(self.endpoint, content=prepared.body, headers=trace_headers())
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}", exc) from exc
        return self._read(response, prepared)

    def _read(self, response: httpx.Response, prepared: PreparedSend) -> list[str]:
        status = response.status_code
        body = _json_or_none(response)
        message = body.get("error") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message:
            message = response.text[:500] or response.reason_phrase
        if status >= 500:
            raise _Retryable(f"HTTP {status}: {message}", None)
        if status == 401:
            raise EventKeyError(f"the event API at {self.url} refused the event key: {message}", status=status)
        if status in (400, 413):
            raise EventRejectedError(message, status=status)
        if status != 200:
            raise EventApiError(f"the event API at {self.url} answered HTTP {status}: {message}", status=status)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or len(ids) != prepared.count or not all(isinstance(i, str) for i in ids):
            raise EventApiError(
                f"the event API at {self.url} answered 200 without {prepared.count} ids: {response.text[:200]}",
                status=status,
            )
        return ids

    def _delay(self, attempt: int) -> float:
        base: float = self.backoff_s * 2.0 ** (attempt - 1)
        return base * (1 + random.random() / 4)

    def _gave_up(self, prepared: PreparedSend, exc: _Retryable) -> EventApiUnavailableError:
        return EventApiUnavailableError(
            f"could not send {prepared.count} event(s) to {self.url} after {self.attempts} attempt(s): {exc.reason}"
        )


class _Retryable(Exception):
    """An attempt that failed in a way worth retrying (network error, 5xx)."""

    def __init__(self, reason: str, cause: BaseException | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
