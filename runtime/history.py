"""A run's history of step attempts: what each write to the run did, for its timeline.

Every script that advances a run appends one entry to the run's history list (``keys.history``) in
the same write: a step's result committed or refused, a failed attempt, a sleep, steps reported
together, the run's end, a sleep's wake-up, a wait's event or timeout, an invoked child's start and
result, a cancellation. A refused write is recorded too, with its refusal as the outcome: a step
whose result was refused (``stale``, ``duplicate``, ``fenced``, ``done``) ran once more than it
needed to (a duplicate execution).

An entry is a msgpack array ``[outcome, at_ms, fields]``: the script's outcome ('ok', 'joined',
'cancelled', or a refusal), the script's clock, and a map of fields Python prepared (``entry``, packed
once and appended as it is: Lua never unpacks it) or, for the writes Lua makes alone (a wake-up, a
child's result, a cancellation), the script built. ``fields["k"]`` is the entry's kind (the ``K_*``
constants below); the other fields depend on it:

- every entry a worker's invocation made: ``attempt`` (1-based) and ``started_ms`` (when the
  invocation's job started; it ended at ``at_ms``);
- ``commit``, ``resolve`` (a step's result): ``key``, ``name``, and ``error`` ({name, message}) when
  the step failed for good;
- ``retry`` (a failed attempt): ``key`` ('' when the function failed outside any step), ``name``,
  ``error``, ``retry_at_ms``, ``executed`` (the step's code ran);
- ``sleep``: ``key``, ``name``, ``wake_at_ms``;
- ``fan_out`` (steps reported together): ``group`` (the run's position, shared by the steps), ``steps``
  (a list of maps: ``key``, ``name``, ``type`` (step, sleep, wait, invoke), and ``wake_at_ms`` for a
  sleep, ``event``, ``if``, ``timeout_ms`` for a wait, ``function``, ``timeout_ms`` for an invoke);
- ``finish``: ``status``, and ``error`` for a failed run; ``key`` and ``name`` when a step's code
  raised that error (a ``NonRetriableError``: the run failed at once, ``attempt`` is the step's);
- ``woke`` (a sleep ended, by load_run): ``key``;
- ``timer`` (a pending step's timer fired: a wait or invoke timed out, a sleep in a fan-out ended),
  ``event`` (a wait matched: ``event_id``, ``event``), ``invoke`` (a child run was started:
  ``child_run_id``, ``function``, ``created``), ``child`` (the child's result: ``child_run_id``,
  ``error`` when it failed), ``no_function`` (an invoke of an unregistered function): ``key``;
- ``cancel``: ``error`` (the reason).

The list is bounded (``HISTORY_MAX`` entries, the oldest dropped) and expires with the run, like
its steps hash.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

#: The most entries a run's history keeps: a run that loops forever keeps its newest ones. A run of
#: 300 steps with a few retries each stays well within it; each entry is ~60-200 bytes.
HISTORY_MAX = 1000
#: The longest error message an entry keeps.
MAX_ERROR_CHARS = 1000

K_COMMIT = "commit"
K_RESOLVE = "resolve"
K_RETRY = "retry"
K_SLEEP = "sleep"
K_FAN_OUT = "fan_out"
K_FINISH = "finish"
K_WOKE = "woke"
K_TIMER = "timer"
K_EVENT = "event"
K_INVOKE = "invoke"
K_CHILD = "child"
K_NO_FUNCTION = "no_function"
K_CANCEL = "cancel"

#: Outcomes of a write that committed what it carried.
APPLIED = frozenset({"ok", "joined", "cancelled"})
#: Outcomes of a write refused because the run was elsewhere: for a step's result, a duplicate
#: execution of that step.
REFUSED = frozenset({"stale", "duplicate", "fenced", "done", "missing"})


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of a run's history (see the module's docstring for ``fields``)."""

    outcome: str
    at_ms: int
    fields: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.fields.get("k", ""))


def entry(kind: str, **fields: Any) -> bytes:
    """The msgpack map of an entry's fields, as the scripts append it (None values left out)."""
    return msgpack.packb({"k": kind, **{k: v for k, v in fields.items() if v is not None}}, use_bin_type=True)


def error_fields(error: Any) -> dict[str, str] | None:
    """An error's name and message (bounded), from a ``{"name", "message", ...}`` dict or a
    ``"Name: message"`` text; None for no error."""
    if error is None or error == "":
        return None
    if isinstance(error, dict):
        name, message = str(error.get("name", "Error")), str(error.get("message", ""))
    else:
        name, sep, message = str(error).partition(": ")
        if not sep:
            name, message = "Error", str(error)
    return {"name": name, "message": message[:MAX_ERROR_CHARS]}


def decode(raw: bytes) -> HistoryEntry | None:
    """One stored entry; None for one that is not an entry (never written by stepq)."""
    try:
        outcome, at_ms, fields = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(fields, dict):
        fields = {}
    return HistoryEntry(str(outcome), int(at_ms), fields)


def lua_prelude() -> str:
    """The history's Lua constant and its append helper (``record_history``)."""
    return f"""-- A run's history (runtime/history.py), generated by history.lua_prelude.
local HISTORY_MAX = {HISTORY_MAX}
-- {{name, message}} of a packed error, for an entry the scripts build (the message bounded), or nil.
local function error_fields(blob)
  local ok, err = pcall(cmsgpack.unpack, blob)
  if not ok or type(err) ~= 'table' then
    return nil
  end
  local message = string.sub(tostring(err.message or ''), 1, {MAX_ERROR_CHARS})
  return {{name = tostring(err.name or 'Error'), message = message}}
end
-- Append ``fields`` (a packed msgpack map) to the run's history as [outcome, now, fields]; keep the
-- newest HISTORY_MAX entries. ``ended``: the run has ended, so the list expires with its record (a
-- missing run records nothing: its list would live for ever; nor does a write with no fields).
local function record_history(run_id, outcome, now, fields, ended)
  if outcome == 'missing' or not fields or fields == '' then
    return
  end
  local key = key_history(run_id)
  local n = redis.call('RPUSH', key, '\\147' .. cmsgpack.pack(outcome) .. cmsgpack.pack(tonumber(now)) .. fields)
  if n > HISTORY_MAX then
    redis.call('LTRIM', key, -HISTORY_MAX, -1)
  end
  if ended then
    local ttl = redis.call('TTL', key_run(run_id))
    if ttl > 0 then
      redis.call('EXPIRE', key, ttl)
    end
  end
end
"""
