"""What the reads show of a run and its steps (``RunView``, ``StepView``): plain data, built by
``stepq.runtime.queries`` from a run's record and read by the CLI, the HTTP API, the dashboard and
the filters."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(slots=True)
class StepView:
    key: str
    name: str
    #: Retry attempts: 1 for a step that succeeded at once, n after n - 1 failures.
    attempts: int
    #: Times the step's code ran, committed or not: more than ``attempts`` means duplicate
    #: executions (a worker lost its lease and another ran the step again; at least once delivery).
    executions: int
    duration_ms: int | None
    finished_ms: int | None
    error: str | None
    memo: Any
    done: bool


@dataclasses.dataclass(slots=True)
class RunView:
    run_id: str
    function: str
    app_id: str
    status: str
    created_ms: int
    started_ms: int | None
    ended_ms: int | None
    wake_at_ms: int | None
    output: Any = None
    error: Any = None
    event_ids: list[str] = dataclasses.field(default_factory=list)
    steps: list[StepView] = dataclasses.field(default_factory=list)
    #: The function's ``retries`` as registered now (each step's, and the function body's own),
    #: or None when the function is no longer registered.
    retries: int | None = None
    #: Retries after the function's own code failed outside any step, over the whole run, and the last error.
    function_retries: int = 0
    function_error: str | None = None
    #: Why flow control skipped the run (status ``skipped``: "rate limited: ...", "idempotent
    #: duplicate of run X", "singleton: run X is active") or cancelled it ("singleton: replaced by
    #: <run>"); None otherwise.
    reason: str | None = None
    #: Why its start waited, and until when: "throttled (key ...)"; None when it did not.
    held: str | None = None
    held_until_ms: int | None = None
    #: The concurrency limit the run waits for now ("concurrency limit 2 reached for key \"acme\""),
    #: None when it does not; ``waited``: the last one it waited for, kept after it went on;
    #: ``held_ms``: how long it waited for concurrency slots in all.
    waiting_for: str | None = None
    waited: str | None = None
    held_ms: int = 0
    #: Why the run has not started yet, for people ("debounced until ...", "batching 3/10 until ..."),
    #: or None.
    waiting: str | None = None
    #: The events a debounced or batched run gathers (runtime/gather.py), or None.
    gathered: dict[str, Any] | None = None
    #: The name of the event that started the run (its first, for a batch), or None (older runs).
    event_name: str | None = None
    #: Operator actions (runtime/actions.py): the run this one replays (``replay_of``) or was
    #: resumed from (``forked_from``, at step key ``from_step``); the runs made from this one.
    replay_of: str | None = None
    forked_from: str | None = None
    from_step: str | None = None
    replays: list[str] = dataclasses.field(default_factory=list)

    @property
    def duplicate_executions(self) -> int:
        """Executions beyond each step's attempts, over the whole run."""
        return sum(max(0, step.executions - step.attempts) for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "duplicate_executions": self.duplicate_executions}
