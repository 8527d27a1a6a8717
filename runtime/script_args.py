"""Named ARGV for the scripts called with many arguments.

One dataclass per script: its fields, in order, are the script's ARGV. Python builds the call from
named fields (``argv()``), and the script reads them by name (``ARG.fence``) from a line generated
from the same dataclass (``lua_header()``, put in front of the script by ``runtime/scripts.py``), so
the order of the arguments lives in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True, slots=True)
class ScriptArgs:
    """The base of the named ARGV of one script (``script``: its name in runtime/lua)."""

    script: ClassVar[str]

    def argv(self) -> list[Any]:
        """The values in ARGV order."""
        return [getattr(self, name) for name in _field_names(type(self))]

    @classmethod
    def lua_header(cls) -> str:
        """``local ARG = {name = ARGV[1], ...}``: the script's view of the same fields; ``ARG_REST`` is
        the index of the first argument after them."""
        names = _field_names(cls)
        entries = ", ".join(f"{name} = ARGV[{i}]" for i, name in enumerate(names, start=1))
        return (
            f"-- ARGV by name, generated from runtime/script_args.py ({cls.__name__}).\n"
            f"local ARG = {{{entries}}}\nlocal ARG_REST = {len(names) + 1}\n"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class CommitStepArgs(ScriptArgs):
    """commit_step.lua: memoize a step's result and enqueue the run's next job."""

    script: ClassVar[str] = "commit_step"

    fence_field: str
    fence: str
    key: str
    value: bytes
    name: str
    attempts: int
    duration_ms: int
    now_ms: int
    #: The run's stack length the step was run at (a stale write is refused).
    position: int
    #: The next job's arq payload, its score (due time) and time to live.
    payload: bytes
    score: int
    ttl_ms: int
    #: The default limits (a run's own, when it has others, are in its record).
    max_state_bytes: int
    retention_s: int
    #: The job that ran the step ('' for none), ended here while its lock holds ``lease_token``.
    job_id: str
    lease_token: str
    #: 1: hand the next job to the same worker under a fresh lease of ``lease_ms``.
    hand_off: int
    lease_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleArgs(ScriptArgs):
    """schedule.lua: park a run until a later job (a retry after backoff, or a sleep's end)."""

    script: ClassVar[str] = "schedule"

    fence_field: str
    fence: str
    #: The run's stack length, or -1 for a planned step (which must still be pending).
    position: int
    key: str
    #: The step's name ('' keeps the recorded one).
    name: str
    attempts: int
    error_message: str
    #: The run's status while parked ('' leaves it).
    status: str
    payload: bytes
    score: int
    ttl_ms: int
    #: A sleep's member of the timers zset ('' when the job is not a sleep's wake-up).
    timer_member: str
    now_ms: int
    #: 1 when the step's code ran and failed (counted as an execution).
    executed: int


@dataclasses.dataclass(frozen=True, slots=True)
class ResolveStepArgs(ScriptArgs):
    """resolve_step.lua: memoize the value of a pending step (see resolve_pending in the prelude)."""

    script: ClassVar[str] = "resolve_step"

    run_id: str
    key: str
    value: bytes
    name: str
    now_ms: int
    #: '' for an unfenced write.
    fence_field: str
    fence: str
    max_state_bytes: int
    retention_s: int
    #: Both '' unless the value is what the step's code just returned (a planned step's result).
    attempts: int | str
    duration_ms: int | str


@dataclasses.dataclass(frozen=True, slots=True)
class CreateRunArgs(ScriptArgs):
    """create_run.lua: create a run and enqueue its first job, at most once per dedupe key. The
    cancellation rules' arguments follow these fields (see ``Registration.args``)."""

    script: ClassVar[str] = "create_run"

    run_id: str
    fn: str
    app: str
    events_blob: bytes
    now_ms: int
    #: The first job's arq payload and time to live.
    payload: bytes
    ttl_ms: int
    #: 0: no dedupe key.
    dedupe_ttl_s: int
    #: The ids of the events that started the run, comma-separated.
    event_ids: str
    #: ``<run_id>|<step key>`` of an invoking run, or ''.
    parent: str
    #: ``<max_state>,<retention_s>`` of the function, or '' for the defaults (see run_limits).
    limits: str
    n_rules: int


@dataclasses.dataclass(frozen=True, slots=True)
class FinishRunArgs(ScriptArgs):
    """finish_run.lua: end a run with its output or error."""

    script: ClassVar[str] = "finish_run"

    run_id: str
    fence_field: str
    fence: str
    status: str
    #: 'output' or 'error', and its msgpack.
    result_field: str
    result_blob: bytes
    now_ms: int
    #: The default limits (a run's own, when it has others, are in its record).
    retention_s: int
    max_state_bytes: int


#: The scripts whose ARGV are named, by script name.
BY_SCRIPT: dict[str, type[ScriptArgs]] = {
    args.script: args for args in (CommitStepArgs, ScheduleArgs, ResolveStepArgs, CreateRunArgs, FinishRunArgs)
}


_NAMES: dict[type[ScriptArgs], tuple[str, ...]] = {}


def _field_names(cls: type[ScriptArgs]) -> tuple[str, ...]:
    """A script's argument names in ARGV order, read once per class: ``argv`` runs on every step."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(field.name for field in dataclasses.fields(cls))
    return names
