"""Step opcodes and memo values, in Inngest's wire shapes (see reference/inngest-protocol.md §2.5, §3)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from typing import Any

from .jsonvalue import JSON


class Op(enum.StrEnum):
    STEP_RUN = "StepRun"
    STEP_ERROR = "StepError"
    STEP_FAILED = "StepFailed"
    STEP_PLANNED = "StepPlanned"
    SLEEP = "Sleep"
    WAIT_FOR_EVENT = "WaitForEvent"
    INVOKE_FUNCTION = "InvokeFunction"
    RUN_COMPLETE = "RunComplete"


_hash_cache: dict[str, str] = {}


def hash_step_id(step_id: str) -> str:
    """The hex SHA-1 of a step id, as Inngest keys steps. Cached: replays hash the same ids again."""
    key = _hash_cache.get(step_id)
    if key is None:
        key = hashlib.sha1(step_id.encode()).hexdigest()
        if len(_hash_cache) < 100_000:
            _hash_cache[step_id] = key
    return key


@dataclasses.dataclass(slots=True)
class Opcode:
    """One thing a function asks of the runtime at a step it reached."""

    op: Op
    id: str
    step_id: str
    index: int | None = None
    data: JSON = None
    error: dict[str, Any] | None = None
    opts: dict[str, Any] | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "op": self.op.value,
            "id": self.id,
            "name": self.name if self.name is not None else self.step_id,
            "displayName": self.step_id,
            "userland": {"id": self.step_id, "index": self.index},
        }
        if self.op is Op.STEP_RUN:
            out["data"] = self.data
        if self.error is not None:
            out["error"] = self.error
        if self.opts is not None:
            out["opts"] = self.opts
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Opcode:
        """Parse an opcode as an SDK sends it; ``op`` is matched without regard to case."""
        op_name = str(raw.get("op", ""))
        op = next((o for o in Op if o.value.lower() == op_name.lower()), None)
        if op is None:
            raise ValueError(f"unknown opcode {op_name!r}")
        step_id = raw.get("displayName") or raw.get("name") or ""
        userland = raw.get("userland") or {}
        return cls(
            op=op,
            id=str(raw.get("id", "")),
            step_id=str(userland.get("id") or step_id),
            index=userland.get("index"),
            data=raw.get("data"),
            error=raw.get("error"),
            opts=raw.get("opts"),
            name=raw.get("name"),
        )


def memo_data(value: JSON) -> dict[str, JSON]:
    """The memo of a finished step."""
    return {"data": value}


def memo_error(error: dict[str, Any]) -> dict[str, Any]:
    """The memo of a step that failed for good."""
    return {"error": error}
