"""Which runs a list, a count or a bulk action is about: ``RunFilter``, parsed from text (CLI flags,
query strings, form fields) and written back as text (links, forms). Pure: no Redis here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import TYPE_CHECKING

from stepq.durations import parse_duration, parse_iso, to_iso

from .run_status import RunStatus

if TYPE_CHECKING:
    from .run_view import RunView

_STATUSES = ", ".join(status.value for status in RunStatus)


def _moment_ms(field: str, text: str, now_ms: int) -> int:
    """ISO 8601 ('2026-11-30T10:00:00Z'; naive means UTC), or a duration ago ('90s', '30m', '2d')."""
    cleaned = text.strip()
    if not cleaned:
        raise ValueError(f"{field}: empty; give an ISO 8601 time or a duration ago like '30m', '2d'")
    if cleaned[0].isdigit() and not cleaned.isdigit():
        try:
            return now_ms - round(parse_duration(cleaned, what=field).total_seconds() * 1000)
        except ValueError:
            pass  # not a duration: try ISO 8601
    try:
        return round(parse_iso(cleaned).timestamp() * 1000)
    except (ValueError, OverflowError):
        pass
    raise ValueError(
        f"{field}: cannot read {text!r}; give an ISO 8601 time ('2026-11-30T10:00:00Z') or a duration ago "
        f"('90s', '30m', '1h', '2d')"
    )


def _iso(ms: int) -> str:
    return to_iso(dt.datetime.fromtimestamp(ms / 1000, dt.UTC))


@dataclasses.dataclass(frozen=True, slots=True)
class RunFilter:
    """Runs of a function, in a status, created in a time range, started by events of a name. Every
    field is optional; an empty filter matches every run."""

    #: A function's slug (``<app>-<id>``), or its id without the ``<app>-`` prefix.
    function: str | None = None
    status: RunStatus | None = None
    #: Created at or after (ms since the epoch).
    since_ms: int | None = None
    #: Created before (ms since the epoch).
    until_ms: int | None = None
    #: Started by an event of this name.
    event_name: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        function: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        event: str | None = None,
        now_ms: int | None = None,
    ) -> RunFilter:
        """From text: empty strings count as absent; ``since``/``until`` take ISO 8601 or a duration
        ago ('90s', '30m', '1h', '2d'). Raises ValueError naming the field and the bad value."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        parsed_status = None
        if status and status.strip():
            try:
                parsed_status = RunStatus(status.strip().lower())
            except ValueError:
                raise ValueError(f"status: unknown status {status!r}; one of {_STATUSES}") from None
        since_ms = _moment_ms("since", since, now) if since and since.strip() else None
        until_ms = _moment_ms("until", until, now) if until and until.strip() else None
        return cls(
            function=function.strip() if function and function.strip() else None,
            status=parsed_status,
            since_ms=since_ms,
            until_ms=until_ms,
            event_name=event.strip() if event and event.strip() else None,
        )

    def to_params(self) -> dict[str, str]:
        """The filter as text ``parse`` reads back (the fields set only): for links and forms."""
        params: dict[str, str] = {}
        if self.function is not None:
            params["function"] = self.function
        if self.status is not None:
            params["status"] = self.status.value
        if self.since_ms is not None:
            params["since"] = _iso(self.since_ms)
        if self.until_ms is not None:
            params["until"] = _iso(self.until_ms)
        if self.event_name is not None:
            params["event"] = self.event_name
        return params

    @property
    def empty(self) -> bool:
        """Whether the filter matches every run."""
        return self == RunFilter()

    def matches_function(self, slug: str, app_id: str) -> bool:
        return self.function is None or self.function in (slug, slug.removeprefix(app_id + "-"))

    def matches(self, view: RunView) -> bool:
        """Whether the run ``view`` shows passes every field of the filter."""
        if not self.matches_function(view.function, view.app_id):
            return False
        if self.status is not None and view.status != self.status.value:
            return False
        if self.since_ms is not None and view.created_ms < self.since_ms:
            return False
        if self.until_ms is not None and view.created_ms >= self.until_ms:
            return False
        return self.event_name is None or view.event_name == self.event_name
