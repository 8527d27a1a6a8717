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
    #: The fields of the run's history entry for this write (runtime/history.py ``entry``), or b''.
    history: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class CreateRunArgs(ScriptArgs):
    """create_run.lua: create a run and enqueue its first job, at most once per dedupe key. The flow
    checks' arguments (``StartChecks.args``), then the cancellation rules' (see
    ``Registration.args``) follow these fields."""

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
    #: Concurrency keys (runtime/concurrency.py ``RunSlots``): '' for none.
    step_slots: str
    run_slots: str
    lane: str
    #: Seconds the run's due-now jobs go ahead (negative: later); 0 for none.
    priority: int
    n_rules: int
    #: How many flow-control checks of the run's start follow (runtime/flow_starts.py; 0: none).
    n_flow: int = 0
    #: ``<max_state>,<retention_s>`` of the caller's default limits (a skipped start's record
    #: expires with them, a run it touches lives within them unless its record says otherwise).
    defaults: str = ""
    #: '' or how the run gathers events (debounce, batching: runtime/gather.py, lua/gather.lua).
    gather: str = ""
    #: The name of the event that started the run (its first), for the run lists; '' for none.
    event_name: str = ""
    #: '' or the W3C ``traceparent`` the run's trace continues (the sender's span, or the invoking
    #: step's): kept in the run's record (``store.TRACE_FIELD``) for the workers that trace it.
    trace: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ForkRunArgs(ScriptArgs):
    """fork_run.lua: start a new run of an ended run's function (a replay, or a resume from a step:
    runtime/actions.py). create_run's ARGV for the new run follow these fields."""

    script: ClassVar[str] = "fork_run"

    old_run_id: str
    new_run_id: str
    #: How many steps of the old run's stack the new run keeps (0: a replay from the start).
    keep: int
    #: The step key expected right after the kept ones ('' for a replay).
    from_step: str
    #: The new run's record field naming the old run: ``replay_of`` or ``forked_from``.
    link: str
    #: How many of its newest replays an old run lists (``replays``).
    max_links: int
    #: Statuses (comma-separated) the old run may be in.
    allowed: str


#: The scripts whose ARGV are named, by script name.
BY_SCRIPT: dict[str, type[ScriptArgs]] = {args.script: args for args in (ResolveStepArgs, CreateRunArgs, ForkRunArgs)}


_NAMES: dict[type[ScriptArgs], tuple[str, ...]] = {}


def _field_names(cls: type[ScriptArgs]) -> tuple[str, ...]:
    """A script's argument names in ARGV order, read once per class: ``argv`` runs on every step."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(field.name for field in dataclasses.fields(cls))
    return names
