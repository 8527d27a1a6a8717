"""Every Redis key stepq writes, in one place.

A run's keys share the hash tag ``{run_id}`` so that a Redis Cluster keeps them in one slot.
"""

from __future__ import annotations

PREFIX = "stepq"

#: arq's own key prefixes (arq.constants); jobs are written in arq's format by our scripts.
ARQ_JOB = "arq:job:"
ARQ_RESULT = "arq:result:"
ARQ_IN_PROGRESS = "arq:in-progress:"
ARQ_RETRY = "arq:retry:"


def run(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:run"


def events(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:events"


def memo(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:memo"


def stack(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:stack"


def steps(run_id: str) -> str:
    """Per-step bookkeeping for people: name, attempts, duration, last error."""
    return f"{PREFIX}:{{{run_id}}}:steps"


def pending(run_id: str) -> str:
    """Step keys reported together and not yet resolved (parallel steps, waits, invokes)."""
    return f"{PREFIX}:{{{run_id}}}:pending"


def jobs(run_id: str) -> str:
    """Ids of the run's delayed jobs (retries, wake-ups, timeouts), dropped when the run ends."""
    return f"{PREFIX}:{{{run_id}}}:jobs"


def run_keys(run_id: str) -> list[str]:
    return [run(run_id), events(run_id), memo(run_id), stack(run_id), steps(run_id)]


RUNS_ACTIVE = f"{PREFIX}:runs:active"  # zset run_id -> created ms
RUNS_DONE = f"{PREFIX}:runs:done"  # zset run_id -> ended ms, trimmed to the retention period
EVENTS = f"{PREFIX}:events"  # zset event id -> received ms, trimmed to the retention period
FUNCTIONS = f"{PREFIX}:functions"  # hash slug -> msgpack config
TIMERS = f"{PREFIX}:timers"  # zset wake job id -> due ms: sleeping runs, for the reconciler


def event(event_id: str) -> str:
    return f"{PREFIX}:event:{event_id}"


def trigger(event_name: str) -> str:
    return f"{PREFIX}:trigger:{event_name}"


def app_functions(app_id: str) -> str:
    return f"{PREFIX}:app:{app_id}:functions"


def function_events(slug: str) -> str:
    return f"{PREFIX}:fn:{slug}:events"


def dedupe(slug: str, event_key: str) -> str:
    return f"{PREFIX}:dedupe:{slug}:{event_key}"


#: The queue of functions served over HTTP: any `stepq worker --http` process takes their jobs.
HTTP_QUEUE_ID = "@http"


def queue(app_id: str) -> str:
    """The arq queue (a zset) that an app's workers poll."""
    return f"{PREFIX}:queue:{app_id}"
