"""Events: what apps send, what functions receive."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sdk.errors import InvalidEventError
from sdk.jsonvalue import NotJSONError, check_json

MAX_EVENT_NAME = 256


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
        unknown = set(raw) - {"name", "data", "id", "ts", "v", "user"}
        if unknown:
            raise InvalidEventError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(
            name=raw.get("name"),  # type: ignore[arg-type]  # validated below
            data=raw["data"] if raw.get("data") is not None else {},
            id=raw.get("id") or "",
            ts=raw.get("ts") or 0,
            v=raw.get("v"),
            user=raw.get("user") or {},
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
        if isinstance(self.ts, bool) or not isinstance(self.ts, int) or self.ts < 0:
            raise InvalidEventError(f"{where}.ts: expected milliseconds since the epoch, got {self.ts!r}")
        if not isinstance(self.user, dict):
            raise InvalidEventError(f"{where}.user: expected an object, got {type(self.user).__name__}")
        if self.v is not None and not isinstance(self.v, str):
            raise InvalidEventError(f"{where}.v: expected a string, got {type(self.v).__name__}")
        try:
            data = check_json(self.data, f"{where}.data")
            user = check_json(self.user, f"{where}.user")
        except NotJSONError as exc:
            raise InvalidEventError(str(exc)) from None
        assert isinstance(data, dict) and isinstance(user, dict)
        return dataclasses.replace(self, data=data, user=user, ts=self.ts or int(time.time() * 1000))
