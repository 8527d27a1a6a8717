"""Durations as users write them and as Inngest's wire carries them.

Users give a duration as a ``timedelta``, an ``int`` of **milliseconds** (as in inngest-py:
``step.sleep("s", 1000)`` sleeps one second), or a string like "500ms", "30s", "5m", "1h30m", "7d"
(the convention of Inngest's wire and its JS SDK). A float is refused rather than guessed at: stepq
once read bare numbers as seconds, and ``2.5`` could mean either. The wire carries strings only.
"""

from __future__ import annotations

import datetime as dt
import math
import re

#: What users may pass as a duration: a timedelta, an int of milliseconds, or a string like "30s".
DurationLike = dt.timedelta | int | str

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_EXAMPLES = "'500ms', '30s', '5m', '2h', '7d', '1h30m'"
_FORMS = "an int of milliseconds (as in inngest-py), a timedelta, or a string like '500ms', '30s', '5m', '1h30m'"


def to_timedelta(value: DurationLike, *, what: str = "duration") -> dt.timedelta:
    """A user's duration as a timedelta: an int is milliseconds, a string is parsed ("30s", "1h30m").

    Raises ValueError naming ``what`` for a float, a bool, a negative or unreadable value."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration, got a bool; give {_FORMS}")
    if isinstance(value, dt.timedelta):
        delta = value
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: must not be negative, got {value!r}")
        try:
            delta = dt.timedelta(milliseconds=value)
        except OverflowError:
            raise ValueError(f"{what}: {value!r} ms is too long a duration") from None
    elif isinstance(value, float):
        raise ValueError(f"{what}: {_float_refused(value)}")
    elif isinstance(value, str):
        return parse_duration(value, what=what)
    else:
        raise ValueError(f"{what}: expected {_FORMS}; got {type(value).__name__}")
    if delta < dt.timedelta(0):
        raise ValueError(f"{what}: must not be negative, got {value!r}")
    return delta


def parse_duration(text: str, *, what: str = "duration") -> dt.timedelta:
    """A duration string as Inngest writes them: "500ms", "30s", "5m", "2h", "7d", "1w", "1h30m"."""
    cleaned = text.strip().lower()
    pos, seconds = 0, 0.0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise ValueError(f"{what}: cannot parse {text!r}; write a duration like {_EXAMPLES}")
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:  # "99999999999999999d": more days than a timedelta holds
        raise ValueError(f"{what}: {text!r} is too long a duration") from None


def _float_refused(value: float) -> str:
    """Why a float duration is refused, and what to write instead, worked out on its value."""
    said = (
        f"got the float {value!r}, which stepq does not guess at: a bare number is an int of "
        f"milliseconds, as in inngest-py"
    )
    if not math.isfinite(value) or not 0 <= value <= 1e9:
        return f"{said}; give {_FORMS}"
    ms = round(value * 1000)
    return f"{said}. For {value:g} seconds write {ms}, timedelta(seconds={value:g}) or '{ms}ms'"


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
