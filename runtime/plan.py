"""The writes one invocation's outcome makes to its run, as data: a ``Plan``.

``stepq.runtime.decide`` builds a plan (pure), ``RunStore.apply`` applies it in one Lua script
(runtime/lua/apply_plan.lua, encoded by ``stepq.runtime.plan_wire``). A plan is one write to the
run (``Write``), fenced by the invocation's claim, plus what the script does when that write is
refused because the run moved in a way the job did not expect: re-enter the run where it stands
(``nudge``), in the same script, so that a refused write leaves the run moving without a second
round trip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from stepq.retry import Backoff

from .jobs import JobKind, JobSpec
from .run_status import RunStatus
from .waits import Registration, WaitRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Now:
    """What a decision reads of the world besides the run: the time, and a random draw for jitter."""

    #: Milliseconds since the epoch.
    ms: int
    #: The same moment as an aware datetime (a sleep's wake time may be an ISO date).
    utc: dt.datetime
    #: A uniform draw in [0, 1): the jitter of a retry's backoff.
    draw: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """A function's retry policy, as plain data (a step may carry its own in its opcode's opts)."""

    max_attempts: int
    backoff: Backoff


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    """Memoize a step's value at the run's position (first writer wins) and queue ``next_job``.

    A step that finished after its run was cancelled is still recorded; nothing follows it."""

    key: str
    name: str
    #: The memo's wire value (``{"data": ...}`` or ``{"error": ...}``).
    value: Any
    attempts: int
    duration_ms: int
    next_job: JobSpec


@dataclasses.dataclass(frozen=True, slots=True)
class Resolve:
    """Memoize a planned step's value (it must still be pending); the last one queues the join."""

    key: str
    name: str
    value: Any
    attempts: int
    duration_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Record a failed attempt and queue the next one at ``due_ms``.

    ``key``: the failed step ('' when the function failed outside any step); a ``PLANNED`` job's retry
    requires the step still pending, any other the run still at the plan's position."""

    job: JobSpec
    due_ms: int
    key: str
    name: str
    attempts: int
    error: str
    #: The step's code ran (counted as an execution).
    executed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Sleep:
    """Park the run until ``wake`` runs at ``due_ms``; the timers zset holds it (``timer_member``)."""

    key: str
    name: str
    wake: JobSpec
    due_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class PendingStep:
    """One step of a fan-out: the job that will resolve it (if any, due at ``due_ms``), its wait (if
    any), and a job to run at once (``start``: an invoke's, which creates the child run)."""

    key: str
    name: str
    job: JobSpec | None = None
    due_ms: int = 0
    wait: Registration | None = None
    start: JobSpec | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FanOut:
    """Record steps reported together as pending and queue their jobs; ``join`` runs once all are
    resolved."""

    steps: tuple[PendingStep, ...]
    join: JobSpec
    status: RunStatus
    #: Steps ran in parallel: the next invocation asks an SDK to plan, not run (Inngest's ForceStepPlan).
    force_plan: bool
    #: The waits registered, for the look-back that finds events which came while they were set up.
    waits: tuple[WaitRecord, ...] = ()

    @property
    def starts_now(self) -> bool:
        """Some job of the fan-out is due now (a planned step, an invoke's start)."""
        return any(s.start is not None or (s.job is not None and s.job.kind is JobKind.PLANNED) for s in self.steps)


@dataclasses.dataclass(frozen=True, slots=True)
class RaisedBy:
    """The step whose code raised the error a run fails with at once (a ``NonRetriableError``): the
    finish records it in the run's steps hash as that step's last, failed, attempt."""

    key: str
    name: str
    attempts: int
    duration_ms: int
    #: ``"Name: message"``, bounded, as a retry records a step's error.
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class Finish:
    """End the run: ``completed`` with ``output``, or ``failed`` with ``error`` (raised by the step
    ``raised_by``, when a step's code raised it; None: the function's own code, or the runtime)."""

    status: RunStatus
    output: Any = None
    error: Any = None
    raised_by: RaisedBy | None = None


Write = Commit | Resolve | Retry | Sleep | FanOut | Finish


@dataclasses.dataclass(frozen=True, slots=True)
class JobLease:
    """The queue job applying a plan, as the write that ends it sees it (not part of the decision:
    the same plan applies whichever worker holds the job)."""

    job_id: str
    #: The worker's lease token (the job's lock holds it while the job is the worker's).
    token: str
    lease_ms: int
    #: The worker can take the run's next job at once (not draining, not past its fairness cap of
    #: consecutive hand-offs).
    may_hand_off: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Everything one invocation's outcome writes, applied atomically by ``RunStore.apply``."""

    run_id: str
    queue_id: str
    #: The claim this invocation holds ('' for both: an unfenced write).
    fence_field: str
    fence: str
    #: The run's stack length the invocation ran at.
    position: int
    write: Write
    now_ms: int
    #: The id of the job applying the plan, when a refusal as ``stale``/``duplicate`` is to nudge the
    #: run ('' : never nudge). It does not count as the run's queued job: it is about to end.
    nudge: str = ""
    #: For the log line: what the invocation did, and the step ids it concerned.
    label: str = ""
    step: str | None = None
    #: Things the answer did that do not change the run but are worth a warning (a divergence).
    warnings: tuple[str, ...] = ()
    #: For the run's history (runtime/history.py): the invocation's attempt number (1-based; 0:
    #: not an invocation's) and when its job started (ms since the epoch; 0: unknown). Not compared:
    #: they describe the invocation, not the writes.
    attempt: int = dataclasses.field(default=0, compare=False)
    started_ms: int = dataclasses.field(default=0, compare=False)
