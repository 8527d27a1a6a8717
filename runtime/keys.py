"""Every Redis key stepq writes, in one place: for Python and for the Lua scripts.

The functions and constants below are the one table of key names. The scripts never spell a key:
``lua_prelude()`` generates a Lua function per key builder (``key_run(run_id)``...) and a constant per
fixed key from this module, and ``runtime/scripts.py`` puts it in front of every script.

A run's keys share the hash tag ``{run_id}`` so that a Redis Cluster keeps them in one slot.
"""

from __future__ import annotations

from collections.abc import Callable

PREFIX = "stepq"

#: arq's own key prefixes (arq.constants); jobs are written in arq's format by our scripts.
ARQ_JOB = "arq:job:"
ARQ_RESULT = "arq:result:"
ARQ_IN_PROGRESS = "arq:in-progress:"
ARQ_RETRY = "arq:retry:"


def job(job_id: str) -> str:
    """An arq job (its payload)."""
    return ARQ_JOB + job_id


def result(job_id: str) -> str:
    """An arq job's result; its presence stops the job id from being enqueued again."""
    return ARQ_RESULT + job_id


def in_progress(job_id: str) -> str:
    """The lock (lease) of a job a worker runs; its value is the worker's lease token."""
    return ARQ_IN_PROGRESS + job_id


def retry(job_id: str) -> str:
    """arq's counter of a job's tries."""
    return ARQ_RETRY + job_id


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
#: Changes whenever a registration changes the functions or their triggers: senders cache their
#: routes under it, and a send routed under an older version is refused and routed again.
FUNCTIONS_VERSION = f"{PREFIX}:functions:version"
TIMERS = f"{PREFIX}:timers"  # zset wake job id -> due ms: sleeping runs, for the reconciler
TIMERS_LOCK = f"{PREFIX}:lock:timers"  # held by the one process reviving lost timers at a time


def event(event_id: str) -> str:
    return f"{PREFIX}:event:{event_id}"


def trigger(event_name: str) -> str:
    """The slugs of the functions an event name triggers."""
    return f"{PREFIX}:trigger:{event_name}"


def function_events(slug: str) -> str:
    """The event names a function is triggered by (the trigger sets it is a member of)."""
    return f"{PREFIX}:fn:{slug}:events"


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


def cron_last(slug: str) -> str:
    """The newest cron tick (ms since the epoch) handled for function ``slug``; only ever moves forward."""
    return f"{PREFIX}:cron:{slug}:last"


def dedupe(slug: str, event_key: str) -> str:
    return f"{PREFIX}:dedupe:{slug}:{event_key}"


#: The queue of functions served over HTTP: any `stepq worker --http` process takes their jobs.
HTTP_QUEUE_ID = "@http"


def queue(app_id: str) -> str:
    """The arq queue (a zset) that an app's workers poll."""
    return f"{PREFIX}:queue:{app_id}"


def ready(queue_id: str) -> str:
    """Wake-up tokens of a queue: idle workers block on this list (BLPOP); an enqueue pushes one.

    Its hash tag is the queue key's whole name, so that it lives in the queue's Redis Cluster slot."""
    return f"{{{queue(queue_id)}}}:ready"


def mover(queue_id: str) -> str:
    """The lease (a worker's token) of the one worker that wakes on the queue's earliest delayed job."""
    return f"{{{queue(queue_id)}}}:mover"


def wake_at(queue_id: str) -> str:
    """When the queue's mover means to wake (ms since the epoch); an earlier delayed job wakes a worker."""
    return f"{{{queue(queue_id)}}}:wake_at"


def app_functions(app_id: str) -> str:
    """The slugs an app registered (written by register_app.lua)."""
    return f"{PREFIX}:app:{app_id}:functions"


def app_registration(app_id: str) -> str:
    """``<stamp_us>:<fingerprint>`` of the worker whose registration of the app is current.

    Written beside every registration a worker makes, so that a worker notices an emptied Redis
    (the key is gone) and an older deployment's worker does not undo a newer one's registration.
    """
    return f"{PREFIX}:app:{app_id}:registration"


def app_checksum(app_id: str) -> str:
    """The checksum of an app's last synced function set (a sync that changes nothing says so)."""
    return f"{PREFIX}:app:{app_id}:checksum"


#: Queue entries a worker could not run (poison), newest first: JSON records, trimmed to a bound.
DEAD_LETTERS = f"{PREFIX}:dead"


def dead_queue(queue_key: str, at_ms: int) -> str:
    """Where a queue key holding the wrong type is renamed to, for a person to inspect."""
    name = queue_key.removeprefix(f"{PREFIX}:queue:")
    return f"{PREFIX}:dead:queue:{name}:{at_ms}"


# -- the Lua side ----------------------------------------------------------------------------------

#: The key builders the scripts use, by the name of the Lua function generated for each (``key_<name>``).
LUA_BUILDERS: dict[str, Callable[[str], str]] = {
    "run": run,
    "events": events,
    "memo": memo,
    "stack": stack,
    "steps": steps,
    "pending": pending,
    "jobs": jobs,
    "job": job,
    "result": result,
    "in_progress": in_progress,
    "retry": retry,
    "queue": queue,
    "ready": ready,
    "wake_at": wake_at,
    "trigger": trigger,
    "function_events": function_events,
    "app_functions": app_functions,
    "app_checksum": app_checksum,
}
#: The fixed keys the scripts use, by the name of the Lua constant generated for each (``KEY_<NAME>``).
LUA_CONSTANTS: dict[str, str] = {
    "RUNS_ACTIVE": RUNS_ACTIVE,
    "RUNS_DONE": RUNS_DONE,
    "TIMERS": TIMERS,
    "FUNCTIONS": FUNCTIONS,
    "FUNCTIONS_VERSION": FUNCTIONS_VERSION,
}
#: Key builders whose argument the scripts read back from a key (``<name>_id_of(key)``).
LUA_INVERSES = ("run", "job", "queue")

_HOLE = "\x00"


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal (key names need no escapes; one that would is refused)."""
    if any(c in text for c in "'\\\n") or _HOLE in text:
        raise ValueError(f"key template {text!r} needs escaping in Lua")
    return f"'{text}'"


def _parts(builder: Callable[[str], str]) -> tuple[str, str]:
    """The text before and after the argument in the builder's keys."""
    before, hole, after = builder(_HOLE).partition(_HOLE)
    if not hole or _HOLE in after:
        raise ValueError(f"keys.{builder.__name__} must use its argument exactly once")
    return before, after


def lua_prelude() -> str:
    """Lua definitions of the key names, generated from this module (see the module's docstring)."""
    lines = ["-- Key names, generated by runtime/keys.py (lua_prelude): the scripts never spell a key."]
    for name, value in LUA_CONSTANTS.items():
        lines.append(f"local KEY_{name} = {lua_string(value)}")
    for name, builder in LUA_BUILDERS.items():
        before, after = _parts(builder)
        body = " .. ".join([*([lua_string(before)] if before else []), "id", *([lua_string(after)] if after else [])])
        lines.append(f"local function key_{name}(id) return {body} end")
    for name in LUA_INVERSES:
        before, after = _parts(LUA_BUILDERS[name])
        lines.append(
            f"local function {name}_id_of(key) return string.sub(key, {len(before) + 1}, {-len(after) - 1}) end"
        )
    return "\n".join(lines) + "\n"
