"""A worker's metrics: what one job's outcome counts.

The executor makes one call per invocation (``invocation_started`` before the function runs,
``invocation_ended`` once its plan is applied); this module turns the plan and the write's outcome
into the counters of ``stepq.runtime.metrics``. The worker's endpoint serves them at ``/metrics``
(``stepq.workers.endpoint``: ``--metrics-port`` or ``--health-port``).
"""

from __future__ import annotations

from stepq.runtime import metrics
from stepq.runtime.metrics import (
    DUPLICATE_EXECUTIONS,
    LEASES_LOST,
    STEP_DURATION,
    STEP_RETRIES,
    STEPS_COMPLETED,
    STEPS_FAILED,
    STEPS_STARTED,
    WRITES_REFUSED,
)
from stepq.runtime.plan import Commit, Plan, Resolve, Retry
from stepq.runtime.store import Outcome

#: Refusals that mean the invocation's work was done twice (at-least-once delivery at work).
DUPLICATES = frozenset({Outcome.DUPLICATE, Outcome.STALE, Outcome.FENCED})
#: Refusals that mean the run ended while the invocation ran.
ENDED = frozenset({Outcome.DONE, Outcome.CANCELLED, Outcome.MISSING})


def invocation_started(function: str) -> None:
    """An invocation of ``function`` is about to run its code."""
    if metrics.enabled():
        STEPS_STARTED.inc(function)


def invocation_ended(function: str, plan: Plan, outcome: Outcome, seconds: float) -> None:
    """An invocation's plan was applied with ``outcome``; it took ``seconds`` up to its decision."""
    if not metrics.enabled():
        return
    STEP_DURATION.observe(seconds, function)
    if outcome is Outcome.OK or outcome is Outcome.JOINED:  # identity first: the common path stays cheap
        write = plan.write
        if isinstance(write, (Commit, Resolve)):  # a tuple: cheaper than a union
            # a step's result: an error value is a step that failed for good
            failed = isinstance(write.value, dict) and "error" in write.value
            (STEPS_FAILED if failed else STEPS_COMPLETED).inc(function)
        elif isinstance(write, Retry):
            STEP_RETRIES.inc(function, "step" if write.executed else "function")
    elif outcome is Outcome.STATE_TOO_LARGE:
        STEPS_FAILED.inc(function)  # the value broke the run's state limit: the run failed
    elif outcome in DUPLICATES:
        DUPLICATE_EXECUTIONS.inc(function, outcome.value)
    elif outcome in ENDED:
        WRITES_REFUSED.inc(function, outcome.value)


def lease_lost(queue: str) -> None:
    if metrics.enabled():
        LEASES_LOST.inc(queue)
