"""Durations as users write them ("30s", "5m", 2.5, timedelta) and as Inngest's wire expects them."""

from __future__ import annotations

import datetime as dt
import re

DurationLike = dt.timedelta | int | float | str

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def to_timedelta(value: DurationLike, *, what: str = "duration") -> dt.timedelta:
    """Parse a duration: a timedelta, a number of seconds, or a string like "30s", "1h30m", "7d"."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration, got a bool")
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(
                f"{what}: cannot parse {value!r}; use a number of seconds, a timedelta, or a string "
                f"like '30s', '5m', '2h', '7d', '1h30m'"
            )
    else:
        raise ValueError(f"{what}: expected a timedelta, seconds or a string, got {type(value).__name__}")
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{what}: must not be negative, got {value!r}")
    return dt.timedelta(seconds=seconds)


def to_duration_str(delta: dt.timedelta) -> str:
    """Inngest's duration string: the largest exact unit, whole seconds at least ("90s", "2h", "7d")."""
    ms = round(delta.total_seconds() * 1000)
    if ms % 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def to_iso(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as Inngest's SDKs write dates.

    Sub-millisecond parts round up, so a wake-up time never moves earlier than asked."""
    utc = moment.astimezone(dt.UTC)
    if utc.microsecond % 1000:
        utc += dt.timedelta(microseconds=1000 - utc.microsecond % 1000)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> dt.datetime:
    """Parse an ISO 8601 date as Inngest writes it; naive dates are read as UTC."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
