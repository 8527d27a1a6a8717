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


RUNS_ACTIVE = f"{PREFIX}:runs:active"  # zset run_id -> created ms
RUNS_DONE = f"{PREFIX}:runs:done"  # zset run_id -> ended ms, trimmed to the retention period
EVENTS = f"{PREFIX}:events"  # zset event id -> received ms, trimmed to the retention period
FUNCTIONS = f"{PREFIX}:functions"  # hash slug -> msgpack config
TIMERS = f"{PREFIX}:timers"  # zset wake job id -> due ms: sleeping runs, for the reconciler


def event(event_id: str) -> str:
    return f"{PREFIX}:event:{event_id}"


def trigger(event_name: str) -> str:
    return f"{PREFIX}:trigger:{event_name}"


def waits(event_name: str) -> str:
    """Waits (and cancellation rules) on an event name: member ``<run>|<key>`` -> record."""
    return f"{PREFIX}:waits:{event_name}"


def wait_scan(event_name: str) -> str:
    """Waits on ``event_name`` whose condition no index covers: every such event checks them."""
    return f"{PREFIX}:waitscan:{event_name}"


def wait_paths(event_name: str) -> str:
    """The event paths the equality indexes of ``event_name`` use."""
    return f"{PREFIX}:waitpaths:{event_name}"


def wait_index(event_name: str, path: str, token: str) -> str:
    """Waits on ``event_name`` whose condition needs ``path`` to equal ``token``."""
    return f"{PREFIX}:waitidx:{event_name}:{path}:{token}"


def recent_events(event_name: str) -> str:
    """Recently received events of a name, for the look-back of a newly registered wait."""
    return f"{PREFIX}:recent:{event_name}"


def dedupe(slug: str, event_key: str) -> str:
    return f"{PREFIX}:dedupe:{slug}:{event_key}"


#: The queue of functions served over HTTP: any `stepq worker --http` process takes their jobs.
HTTP_QUEUE_ID = "@http"


def queue(app_id: str) -> str:
    """The arq queue (a zset) that an app's workers poll."""
    return f"{PREFIX}:queue:{app_id}"


def app_functions(app_id: str) -> str:
    """The slugs an app registered (written by register_app.lua)."""
    return f"{PREFIX}:app:{app_id}:functions"


def app_registration(app_id: str) -> str:
    """``<stamp_us>:<fingerprint>`` of the worker whose registration of the app is current.

    Written beside every registration a worker makes, so that a worker notices an emptied Redis
    (the key is gone) and an older deployment's worker does not undo a newer one's registration.
    """
    return f"{PREFIX}:app:{app_id}:registration"


#: Queue entries a worker could not run (poison), newest first: JSON records, trimmed to a bound.
DEAD_LETTERS = f"{PREFIX}:dead"


def dead_queue(queue_key: str, at_ms: int) -> str:
    """Where a queue key holding the wrong type is renamed to, for a person to inspect."""
    name = queue_key.removeprefix(f"{PREFIX}:queue:")
    return f"{PREFIX}:dead:queue:{name}:{at_ms}"
