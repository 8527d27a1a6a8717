"""The read model's JSON answers for the HTTP API (runtime/api.py routes them): query parameters in,
JSON-ready dicts out. ``BadParameter`` names the parameter and the bad value (the API answers 400).

- ``GET /v0/runs?function=&status=&since=&until=&event=&limit=&cursor=`` or ``?q=<run or event id>``:
  ``{"runs": [...], "cursor": str | null, "truncated": bool}`` (``truncated``: the page stopped at its
  scan bound; more may match after ``cursor``);
- ``GET /v0/functions``: ``{"functions": [...]}``;
- ``GET /v0/events?name=&limit=&cursor=``: ``{"events": [...], "cursor": str | null}``;
- ``GET /v0/events/{id}``: the event with its outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .connection import RedisClient
from .event_queries import get_event, recent_events
from .function_summaries import function_summaries
from .queries import RunFilter, find_runs, search_runs

MAX_LIMIT = 200
_RUN_PARAMS = ("function", "status", "since", "until", "event", "limit", "cursor", "q")
_EVENT_PARAMS = ("name", "limit", "cursor")


class BadParameter(ValueError):
    """A query parameter the API cannot use; the message names it."""


def _check_known(params: Mapping[str, str], known: tuple[str, ...]) -> None:
    for name in params:
        if name not in known:
            raise BadParameter(f"{name}: unknown parameter; known: {', '.join(known)}")


def _limit(params: Mapping[str, str], default: int = 50) -> int:
    raw = params.get("limit", "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadParameter(f"limit: expected a whole number from 1 to {MAX_LIMIT}, got {raw[:40]!r}")
    return int(raw)


async def runs_page(redis: RedisClient, params: Mapping[str, str]) -> dict[str, Any]:
    """A page of runs matching the filter in ``params``, or the search ``q``."""
    _check_known(params, _RUN_PARAMS)
    limit = _limit(params)
    query = params.get("q", "").strip()
    if query:
        found = await search_runs(redis, query)
        return {"runs": [v.to_dict() for v in found[:limit]], "cursor": None, "truncated": False}
    try:
        flt = RunFilter.parse(
            function=params.get("function"),
            status=params.get("status"),
            since=params.get("since"),
            until=params.get("until"),
            event=params.get("event"),
        )
        page = await find_runs(redis, flt, limit=limit, cursor=params.get("cursor") or None)
    except ValueError as exc:
        raise BadParameter(str(exc)) from None
    return {"runs": [v.to_dict() for v in page.runs], "cursor": page.cursor, "truncated": page.truncated}


async def functions(redis: RedisClient) -> dict[str, Any]:
    return {"functions": [f.to_dict() for f in await function_summaries(redis)]}


async def events_page(redis: RedisClient, params: Mapping[str, str]) -> dict[str, Any]:
    _check_known(params, _EVENT_PARAMS)
    limit = _limit(params)
    try:
        page = await recent_events(
            redis, limit=limit, cursor=params.get("cursor") or None, name=params.get("name") or None
        )
    except ValueError as exc:
        raise BadParameter(str(exc)) from None
    return {"events": [e.to_dict() for e in page.events], "cursor": page.cursor}


async def event(redis: RedisClient, event_id: str) -> dict[str, Any] | None:
    found = await get_event(redis, event_id)
    return found.to_dict() if found is not None else None
