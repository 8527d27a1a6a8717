"""Events: what apps send, what functions receive."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .errors import InvalidEventError
from .jsonvalue import NotJSONError, check_json, child_path, text_problem

MAX_EVENT_NAME = 256
#: Largest ``ts``: milliseconds must fit a signed 64-bit integer (msgpack, Redis scores, other SDKs).
MAX_TS = 2**63 - 1
#: Deepest nesting of objects and lists in an event's ``data`` (and ``user``), as MongoDB allows in
#: a document: deep enough for any real payload, shallow enough that nothing downstream recurses
#: out, with room for the runtime to wrap an event (a failure event carries its run's event).
MAX_EVENT_DEPTH = 100
_FIELDS = ("name", "data", "id", "ts", "v", "user")


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """An event. ``id`` is the sender's idempotency key: functions start at most once per id in 24 h."""

    name: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = ""
    ts: int = 0
    v: str | None = None
    user: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The wire shape Inngest's SDKs read: ``{name, data, id, ts, user[, v]}``."""
        out: dict[str, Any] = {
            "name": self.name,
            "data": self.data,
            "id": self.id,
            "ts": self.ts,
            "user": self.user,
        }
        if self.v is not None:
            out["v"] = self.v
        return out

    @classmethod
    def from_dict(cls, raw: Any, *, where: str = "event") -> Event:
        """Build and validate an event from its wire shape; errors name the bad field."""
        if isinstance(raw, Event):
            return raw.validated(where=where)
        if not isinstance(raw, dict):
            raise InvalidEventError(f"{where}: expected an object, got {type(raw).__name__}")
        unknown = [k for k in raw if k not in _FIELDS]
        if unknown:
            # Keys shown as paths: quoted and ASCII, whatever the sender put in them.
            shown = ", ".join(sorted(child_path("", str(k)) for k in unknown[:10]))
            raise InvalidEventError(f"{where}: unknown field(s) {shown}")
        # An explicit null means "not set"; any other value is checked as it is (no `or` defaults,
        # which would turn `"id": 0` or `"user": []` into an accepted empty value).
        return cls(
            name=raw.get("name"),  # type: ignore[arg-type]  # validated below
            data=raw["data"] if raw.get("data") is not None else {},
            id=raw["id"] if raw.get("id") is not None else "",
            ts=raw["ts"] if raw.get("ts") is not None else 0,
            v=raw.get("v"),
            user=raw["user"] if raw.get("user") is not None else {},
        ).validated(where=where)

    def validated(self, *, where: str = "event") -> Event:
        """Return a checked copy (tuples turned to lists, ``ts`` filled in) or raise InvalidEventError."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidEventError(f"{where}.name: an event needs a non-empty string name")
        if len(self.name) > MAX_EVENT_NAME:
            raise InvalidEventError(f"{where}.name: longer than {MAX_EVENT_NAME} characters")
        if not isinstance(self.data, dict):
            raise InvalidEventError(f"{where}.data: expected an object, got {type(self.data).__name__}")
        if not isinstance(self.id, str):
            raise InvalidEventError(f"{where}.id: expected a string, got {type(self.id).__name__}")
        if isinstance(self.ts, bool) or not isinstance(self.ts, int) or not 0 <= self.ts <= MAX_TS:
            raise InvalidEventError(
                f"{where}.ts: expected milliseconds since the epoch, an integer from 0 to {MAX_TS}, "
                f"got {_shown(self.ts)}"
            )
        if not isinstance(self.user, dict):
            raise InvalidEventError(f"{where}.user: expected an object, got {type(self.user).__name__}")
        if self.v is not None and not isinstance(self.v, str):
            raise InvalidEventError(f"{where}.v: expected a string, got {type(self.v).__name__}")
        for field, text in (("name", self.name), ("id", self.id), ("v", self.v)):
            problem = text_problem(text) if text else None
            if problem is not None:
                raise InvalidEventError(f"{where}.{field}: {problem}")
        try:
            data = check_json(self.data, f"{where}.data", max_depth=MAX_EVENT_DEPTH)
            user = check_json(self.user, f"{where}.user", max_depth=MAX_EVENT_DEPTH)
        except NotJSONError as exc:
            raise InvalidEventError(str(exc)) from None
        assert isinstance(data, dict) and isinstance(user, dict)
        return dataclasses.replace(self, data=data, user=user, ts=self.ts or int(time.time() * 1000))


def _shown(value: Any) -> str:
    """A bad value for an error message: short, and ASCII-safe (``repr`` escapes surrogates)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
