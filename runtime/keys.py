"""Every Redis key stepq writes, in one place: for Python and for the Lua scripts.

The functions and constants below are the one table of key names. The scripts never spell a key:
``lua_prelude()`` generates a Lua function per key builder (``key_run(run_id)``,
``key_queue(tag, queue_id)``...) from this module, and ``runtime/scripts.py`` puts it in front of
every script.

Keys come in three kinds (see ``runtime/shards.py`` for what a shard is):

- a run's and its jobs' keys carry the hash tag of the run's shard, read from the run id (or the
  job id, which starts with it): ``stepq:{<tag>}:run:<run id>``, ``arq:job:{<tag>}:<job id>``;
- a shard's part of a queue and its indexes carry the shard's tag: ``stepq:{<tag>}:queue:<app>``,
  ``stepq:{<tag>}:timers``... so every script on a step's path touches one Redis Cluster slot;
- the event log (an event's record and outcomes, a shard's events index, events by name, recent
  events by name) is sharded too: a batch of events is stored in one shard, named by its events'
  ids (``shards.event_shard``), and what it makes other shards do goes through that shard's outbox
  (``stepq:{<tag>}:outbox``, runtime/outbox.py);
- the registry (functions, triggers, apps) shares one tag of its own, ``{registry}``, so that a
  registration is one script in one slot; cron's last ticks carry no tag (one key a command).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .shards import SHARD_TAGS, event_shard, shards, tag_of

PREFIX = "stepq"

#: arq's own key prefixes (arq.constants), before the shard's tag: jobs are written in arq's format.
ARQ_JOB = "arq:job:"
ARQ_RESULT = "arq:result:"
ARQ_IN_PROGRESS = "arq:in-progress:"
ARQ_RETRY = "arq:retry:"


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """A sharded key's name: ``<head>{<tag>}<tail><argument>`` (the argument may be empty)."""

    head: str
    tail: str

    def build(self, tag: str, argument: str = "") -> str:
        return f"{self.head}{{{tag}}}{self.tail}{argument}"


def _run_shape(kind: str) -> Shape:
    return Shape(f"{PREFIX}:", f":{kind}:")


#: A run's keys (tagged with the run's shard), by kind.
RUN_SHAPES = {
    kind: _run_shape(kind) for kind in ("run", "events", "memo", "stack", "steps", "pending", "jobs", "history")
}
#: A job's keys (tagged with its run's shard), in arq's names.
JOB_SHAPES = {
    "job": Shape(ARQ_JOB, ":"),
    "result": Shape(ARQ_RESULT, ":"),
    "in_progress": Shape(ARQ_IN_PROGRESS, ":"),
    "retry": Shape(ARQ_RETRY, ":"),
}
#: A shard's part of a queue (its argument: the queue id).
QUEUE_SHAPES = {kind: Shape(f"{PREFIX}:", f":{kind}:") for kind in ("queue", "ready", "mover", "wake_at")}
#: Concurrency limits' keys in a shard (runtime/concurrency.py; their argument: a concurrency key's
#: id, or a lane's): the slots taken (zset member -> lease end), the lanes waiting for a slot (zset
#: lane -> virtual time), and a lane's waiting jobs (zset job id -> order).
SLOT_SHAPES = {kind: Shape(f"{PREFIX}:", f":{kind}:") for kind in ("slots", "slot_waiters", "lane")}
#: A shard's indexes and lists (no argument).
SHARD_SHAPES = {
    "runs_active": Shape(f"{PREFIX}:", ":runs:active"),  # zset run_id -> created ms
    "runs_done": Shape(f"{PREFIX}:", ":runs:done"),  # zset run_id -> ended ms, trimmed to the retention
    "timers": Shape(f"{PREFIX}:", ":timers"),  # zset ``queue|run|position`` -> due ms: sleeping runs
    "timers_lock": Shape(f"{PREFIX}:", ":lock:timers"),  # the one process reviving the shard's lost timers
    "dead": Shape(f"{PREFIX}:", ":dead"),  # the shard's queue entries no worker could run, newest first
    # The run lists' indexes (runtime/run_index.lua writes them, runtime/queries.py reads them):
    "run_counts": Shape(f"{PREFIX}:", ":runs:counts"),  # hash ``<slug>|<status>`` -> runs now in it (not ended)
    "runs_expiry": Shape(f"{PREFIX}:", ":runs:expiry"),  # zset ended run (msgpack) -> when its record expires
    # The shard's outbox (runtime/outbox.py): messages its scripts wrote for other shards.
    "outbox": Shape(f"{PREFIX}:", ":outbox"),  # zset message id -> when the sweeper may redeliver it (ms)
    "outbox_body": Shape(f"{PREFIX}:", ":outbox:body"),  # hash message id -> msgpack message
    "outbox_lock": Shape(f"{PREFIX}:", ":lock:outbox"),  # the one process sweeping the shard's outbox
    "outbox_dead": Shape(f"{PREFIX}:", ":outbox:dead"),  # messages no delivery could read, newest first
    # The shard's part of the event log (an event's shard is its id's: ``event_shard``).
    "events_index": Shape(f"{PREFIX}:", ":events"),  # zset event id -> received ms, trimmed to the retention
}
#: Keys of one received outbox message, in the target shard (their argument: the message id): what
#: its delivery did (msgpack reply), so that a redelivery repeats the answer and not the writes.
RECEIVED_SHAPE = Shape(f"{PREFIX}:", ":outbox:done:")
#: A shard's run indexes by one value (their argument: an event name, a status, or ``<slug>|<status>``);
#: zsets run_id -> created ms, but ``runs_ended``: run_id -> ended ms, the last hour. Every run is in
#: one status's and one function-and-status's: all runs, or a function's, are their unions.
INDEX_SHAPES = {
    kind: Shape(f"{PREFIX}:", f":runs:{kind.removeprefix('runs_')}:")
    for kind in ("runs_ev", "runs_st", "runs_fs", "runs_ended")
}


# -- a run's keys ------------------------------------------------------------------------------------


def run(run_id: str) -> str:
    """The run's record (a hash: status, function, queue, fences, timer...)."""
    return RUN_SHAPES["run"].build(tag_of(run_id), run_id)


def events(run_id: str) -> str:
    """The msgpack list of the events that started the run."""
    return RUN_SHAPES["events"].build(tag_of(run_id), run_id)


def memo(run_id: str) -> str:
    """Step key -> msgpack result: the memoized steps."""
    return RUN_SHAPES["memo"].build(tag_of(run_id), run_id)


def stack(run_id: str) -> str:
    """The step keys in the order their results were committed."""
    return RUN_SHAPES["stack"].build(tag_of(run_id), run_id)


def steps(run_id: str) -> str:
    """Per-step bookkeeping for people: name, attempts, duration, last error."""
    return RUN_SHAPES["steps"].build(tag_of(run_id), run_id)


def pending(run_id: str) -> str:
    """Step keys reported together and not yet resolved (parallel steps, waits, invokes)."""
    return RUN_SHAPES["pending"].build(tag_of(run_id), run_id)


def history(run_id: str) -> str:
    """The run's history of step attempts (a list of msgpack entries, runtime/history.py), bounded."""
    return RUN_SHAPES["history"].build(tag_of(run_id), run_id)


def jobs(run_id: str) -> str:
    """Ids of the run's delayed jobs (retries, wake-ups, timeouts), dropped when the run ends."""
    return RUN_SHAPES["jobs"].build(tag_of(run_id), run_id)


# -- a job's keys (arq's, with the run's shard tag) -----------------------------------------------


def job(job_id: str) -> str:
    """An arq job (its payload)."""
    return JOB_SHAPES["job"].build(tag_of(job_id), job_id)


def result(job_id: str) -> str:
    """An arq job's result; its presence stops the job id from being enqueued again."""
    return JOB_SHAPES["result"].build(tag_of(job_id), job_id)


def in_progress(job_id: str) -> str:
    """The lock (lease) of a job a worker runs; its value is the worker's lease token."""
    return JOB_SHAPES["in_progress"].build(tag_of(job_id), job_id)


def retry(job_id: str) -> str:
    """arq's counter of a job's tries."""
    return JOB_SHAPES["retry"].build(tag_of(job_id), job_id)


# -- a shard's queues and indexes -------------------------------------------------------------------

#: The queue of functions served over HTTP: any `stepq worker --http` process takes their jobs.
HTTP_QUEUE_ID = "@http"


def queue(shard: int, queue_id: str) -> str:
    """A shard's part of a queue (a zset job id -> due ms, arq's queue): an app's id for the functions
    its workers import, ``@http`` for functions served over HTTP."""
    return QUEUE_SHAPES["queue"].build(SHARD_TAGS[shard], queue_id)


def ready(shard: int, queue_id: str) -> str:
    """Wake-up tokens of a shard's queue: idle workers block on this list (BLPOP); an enqueue pushes one."""
    return QUEUE_SHAPES["ready"].build(SHARD_TAGS[shard], queue_id)


def mover(shard: int, queue_id: str) -> str:
    """The lease (a worker's token) of the one worker that wakes on the queue's earliest delayed job."""
    return QUEUE_SHAPES["mover"].build(SHARD_TAGS[shard], queue_id)


def wake_at(shard: int, queue_id: str) -> str:
    """When the queue's mover means to wake (ms since the epoch); an earlier delayed job wakes a worker."""
    return QUEUE_SHAPES["wake_at"].build(SHARD_TAGS[shard], queue_id)


def lock_in(shard: int, member: bytes) -> bytes:
    """The in-progress lock a member of ``shard``'s queue has if it is a job (bytes: a poison member
    may be no text); ``in_progress(job_id)`` for a job of that shard."""
    shape = JOB_SHAPES["in_progress"]
    return shape.build(SHARD_TAGS[shard]).encode() + member


def slots(shard: int, key_id: str) -> str:
    """The slots taken of one concurrency key: job ids (a run's id, for a run-level limit) -> the end
    of the lease they are held for (``+inf`` for a run's)."""
    return SLOT_SHAPES["slots"].build(SHARD_TAGS[shard], key_id)


def slot_waiters(shard: int, key_id: str) -> str:
    """The lanes waiting for a slot of one concurrency key, scored by their virtual time (the lowest
    is served first: the fair share between keys)."""
    return SLOT_SHAPES["slot_waiters"].build(SHARD_TAGS[shard], key_id)


def lane(shard: int, lane_id: str) -> str:
    """The jobs of one lane (the runs sharing one set of concurrency keys) waiting for slots, in the
    order they go: runs in progress first, then by due time (priority included)."""
    return SLOT_SHAPES["lane"].build(SHARD_TAGS[shard], lane_id)


def runs_active(shard: int) -> str:
    return SHARD_SHAPES["runs_active"].build(SHARD_TAGS[shard])


def runs_done(shard: int) -> str:
    return SHARD_SHAPES["runs_done"].build(SHARD_TAGS[shard])


def run_counts(shard: int) -> str:
    """How many runs of the shard are in each status that is not an end (hash ``<slug>|<status>`` ->
    count), kept by the one Lua function every status change goes through (set_status)."""
    return SHARD_SHAPES["run_counts"].build(SHARD_TAGS[shard])


def runs_expiry(shard: int) -> str:
    """The shard's ended runs (msgpack ``[run_id, slug, status, event name]``) -> when their records
    expire: the runs to drop from the indexes then."""
    return SHARD_SHAPES["runs_expiry"].build(SHARD_TAGS[shard])


def runs_by_event(shard: int, event_name: str) -> str:
    """The runs started by events of one name (zset run_id -> created ms)."""
    return INDEX_SHAPES["runs_ev"].build(SHARD_TAGS[shard], event_name)


def runs_by_status(shard: int, status: str) -> str:
    """The runs in one status now (zset run_id -> created ms); an ended run leaves it when its record
    expires."""
    return INDEX_SHAPES["runs_st"].build(SHARD_TAGS[shard], status)


def runs_by_function_status(shard: int, slug: str, status: str) -> str:
    """The runs of one function in one status now (zset run_id -> created ms)."""
    return INDEX_SHAPES["runs_fs"].build(SHARD_TAGS[shard], f"{slug}|{status}")


def recent_ends(shard: int, slug: str, status: str) -> str:
    """The runs of one function that ended in ``status`` within the last hour (zset run_id -> ended ms)."""
    return INDEX_SHAPES["runs_ended"].build(SHARD_TAGS[shard], f"{slug}|{status}")


def timers(shard: int) -> str:
    return SHARD_SHAPES["timers"].build(SHARD_TAGS[shard])


def timers_lock(shard: int) -> str:
    return SHARD_SHAPES["timers_lock"].build(SHARD_TAGS[shard])


def dead_letters(shard: int) -> str:
    """Queue entries of the shard a worker could not run (poison): JSON records, trimmed to a bound."""
    return SHARD_SHAPES["dead"].build(SHARD_TAGS[shard])


def dead_queue(shard: int, queue_id: str, at_ms: int) -> str:
    """Where a queue key holding the wrong type is renamed to (in its slot), for a person to inspect."""
    return Shape(f"{PREFIX}:", ":dead:queue:").build(SHARD_TAGS[shard], f"{queue_id}:{at_ms}")


def waits(shard: int, event_name: str) -> str:
    """The shard's waits (and cancellation rules) on an event name: member ``<run>|<key>`` -> record."""
    return Shape(f"{PREFIX}:", ":waits:").build(SHARD_TAGS[shard], event_name)


def wait_scan(shard: int, event_name: str) -> str:
    """Waits on ``event_name`` whose condition no index covers: every such event checks them."""
    return Shape(f"{PREFIX}:", ":waitscan:").build(SHARD_TAGS[shard], event_name)


def wait_paths(shard: int, event_name: str) -> str:
    """The event paths the equality indexes of ``event_name`` use."""
    return Shape(f"{PREFIX}:", ":waitpaths:").build(SHARD_TAGS[shard], event_name)


def wait_index(shard: int, event_name: str, path: str, token: str) -> str:
    """Waits on ``event_name`` whose condition needs ``path`` to equal ``token``."""
    return Shape(f"{PREFIX}:", ":waitidx:").build(SHARD_TAGS[shard], f"{event_name}:{path}:{token}")


def dedupe(shard: int, slug: str, event_key: str) -> str:
    """The run an event key started for a function (``placement.shard_for`` picks the shard)."""
    return Shape(f"{PREFIX}:", ":dedupe:").build(SHARD_TAGS[shard], f"{slug}:{event_key}")


#: Flow control of run starts (runtime/flow_starts.py), per function and key value (its digest,
#: runtime/flow_keys.py; '' for a limit without a key). They carry the shard tag of the run being
#: created, so a limit is exact because runtime/placement.py creates every run sharing its key in
#: one shard (the key value's, or the function's).
FLOW_START_KINDS = ("rate", "rate_n", "throttle", "idem", "singleton")


def flow_start(shard: int, kind: str, slug: str, digest: str) -> str:
    """A start limit's state: ``rate`` (the rate limit's buckets, newest first) and ``rate_n`` (their
    total), ``throttle`` (the throttle's theoretical arrival time), ``idem`` (the run an idempotency
    key started), ``singleton`` (the active run holding a singleton key)."""
    if kind not in FLOW_START_KINDS:
        raise ValueError(f"unknown flow-control key kind {kind!r}")
    return Shape(f"{PREFIX}:", f":{kind}:").build(SHARD_TAGS[shard], f"{slug}:{digest}")


def debounce(shard: int, slug: str, key_digest: str) -> str:
    """The run a function's open debounce of one key value gathers events into (runtime/gather.py)."""
    return Shape(f"{PREFIX}:", ":debounce:").build(SHARD_TAGS[shard], f"{slug}:{key_digest}")


def batch(shard: int, slug: str, key_digest: str) -> str:
    """The run a function's open batch of one key value gathers events into (runtime/gather.py)."""
    return Shape(f"{PREFIX}:", ":batch:").build(SHARD_TAGS[shard], f"{slug}:{key_digest}")


def every_shard(builder: Callable[..., str], *args: str) -> list[str]:
    """``builder(shard, *args)`` for every shard served."""
    return [builder(shard, *args) for shard in shards()]


# -- the outbox ----------------------------------------------------------------------------------


def outbox(shard: int) -> str:
    return SHARD_SHAPES["outbox"].build(SHARD_TAGS[shard])


def outbox_body(shard: int) -> str:
    return SHARD_SHAPES["outbox_body"].build(SHARD_TAGS[shard])


def outbox_lock(shard: int) -> str:
    return SHARD_SHAPES["outbox_lock"].build(SHARD_TAGS[shard])


def outbox_dead(shard: int) -> str:
    return SHARD_SHAPES["outbox_dead"].build(SHARD_TAGS[shard])


def outbox_received(shard: int, message_id: str) -> str:
    """What the delivery of message ``message_id`` to ``shard`` answered (expires)."""
    return RECEIVED_SHAPE.build(SHARD_TAGS[shard], message_id)


# -- the event log (in shards: an event's shard is named by its id, ``shards.event_shard``) ----------


def events_index(shard: int) -> str:
    """The shard's stored events (zset event id -> received ms, trimmed to the retention period)."""
    return SHARD_SHAPES["events_index"].build(SHARD_TAGS[shard])


def events_named(shard: int, event_name: str) -> str:
    """The shard's stored events of one name (zset event id -> received ms, trimmed to the retention)."""
    return Shape(f"{PREFIX}:", ":events:name:").build(SHARD_TAGS[shard], event_name)


def event(event_id: str) -> str:
    """A stored event (msgpack), in its id's shard."""
    return Shape(f"{PREFIX}:", ":event:").build(SHARD_TAGS[event_shard(event_id)], event_id)


def event_outcomes(event_id: str) -> str:
    """What a stored event did, per function it reached (msgpack list of ``[slug, outcome, run_id,
    reason]``: runtime/event_queries.py); expires with the event."""
    return Shape(f"{PREFIX}:", ":outcomes:").build(SHARD_TAGS[event_shard(event_id)], event_id)


def recent_events(shard: int, event_name: str) -> str:
    """The shard's recently received events of a name (``<ms>:<id>``, newest first), for the look-back
    of a newly registered wait."""
    return Shape(f"{PREFIX}:", ":recent:").build(SHARD_TAGS[shard], event_name)


#: The registry's keys start with this (one hash tag: one slot).
REGISTRY = f"{PREFIX}:{{registry}}"
FUNCTIONS = f"{REGISTRY}:functions"  # hash slug -> msgpack config
#: Changes whenever a registration changes the functions or their triggers: senders cache their
#: routes under it, and a send routed under an older version is refused and routed again.
FUNCTIONS_VERSION = f"{REGISTRY}:functions:version"
#: On a single Redis, how many shards the processes opening it use (1..32; absent: 1). A testing aid
#: that exercises the sharded paths on one server; a Redis Cluster always has all 32.
SHARD_COUNT = f"{REGISTRY}:shards"


def trigger(event_name: str) -> str:
    """The slugs of the functions an event name triggers."""
    return f"{REGISTRY}:trigger:{event_name}"


def function_events(slug: str) -> str:
    """The event names a function is triggered by (the trigger sets it is a member of)."""
    return f"{REGISTRY}:fn:{slug}:events"


def cron_last(slug: str) -> str:
    """The newest cron tick (ms since the epoch) handled for function ``slug``; only ever moves forward."""
    return f"{PREFIX}:cron:{slug}:last"


def app_functions(app_id: str) -> str:
    """The slugs an app registered (written by register_app.lua)."""
    return f"{REGISTRY}:app:{app_id}:functions"


def app_registration(app_id: str) -> str:
    """``<stamp_us>:<fingerprint>`` of the worker whose registration of the app is current.

    Written beside every registration a worker makes, so that a worker notices an emptied Redis
    (the key is gone) and an older deployment's worker does not undo a newer one's registration.
    """
    return f"{REGISTRY}:app:{app_id}:registration"


def app_checksum(app_id: str) -> str:
    """The checksum of an app's last synced function set (a sync that changes nothing says so)."""
    return f"{REGISTRY}:app:{app_id}:checksum"


# -- the Lua side ----------------------------------------------------------------------------------

#: The registry's key builders the scripts use, by the name of the Lua function generated for each.
LUA_BUILDERS: dict[str, Callable[[str], str]] = {
    "trigger": trigger,
    "function_events": function_events,
    "app_functions": app_functions,
    "app_checksum": app_checksum,
}
#: The registry's fixed keys the scripts use, by the name of the Lua constant generated for each.
LUA_CONSTANTS: dict[str, str] = {"FUNCTIONS": FUNCTIONS, "FUNCTIONS_VERSION": FUNCTIONS_VERSION}
#: Sharded keys whose argument the scripts read back from a key (``<name>_id_of(key)``).
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


def _lua_shaped(name: str, shape: Shape, tag: str, argument: str | None) -> str:
    """A Lua function building ``shape``'s keys from its tag expression and argument."""
    params = ", ".join(p for p in ("tag" if tag == "tag" else "", argument or "") if p)
    body = f"{lua_string(shape.head + '{')} .. {tag} .. {lua_string('}' + shape.tail)}"
    if argument:
        body += f" .. {argument}"
    return f"local function key_{name}({params}) return {body} end"


def lua_prelude() -> str:
    """Lua definitions of the key names, generated from this module (see the module's docstring).

    A run's and a job's keys take the id (``key_run(run_id)``), a shard's take its tag first
    (``key_queue(tag, queue_id)``, ``key_timers(tag)``): a script finds the tag with ``tag_of(id)``
    or ``tag_of_key(key)`` (``shards.lua_prelude``)."""
    lines = ["-- Key names, generated by runtime/keys.py (lua_prelude): the scripts never spell a key."]
    for name, value in LUA_CONSTANTS.items():
        lines.append(f"local KEY_{name} = {lua_string(value)}")
    for name, builder in LUA_BUILDERS.items():
        before, after = _parts(builder)
        body = " .. ".join([*([lua_string(before)] if before else []), "id", *([lua_string(after)] if after else [])])
        lines.append(f"local function key_{name}(id) return {body} end")
    for name, shape in (RUN_SHAPES | JOB_SHAPES).items():
        lines.append(_lua_shaped(name, shape, "tag_of(id)", "id"))
    for name, shape in (QUEUE_SHAPES | SLOT_SHAPES | INDEX_SHAPES).items():
        lines.append(_lua_shaped(name, shape, "tag", "id"))
    for name, shape in SHARD_SHAPES.items():
        lines.append(_lua_shaped(name, shape, "tag", None))
    lines.append(_lua_shaped("outbox_received", RECEIVED_SHAPE, "tag", "id"))
    for name in LUA_INVERSES:
        shape = (RUN_SHAPES | JOB_SHAPES | QUEUE_SHAPES)[name]
        # the tag holds no '}': the argument starts after the first '}' past the head, and the tail
        lines.append(
            f"local function {name}_id_of(key) return string.sub(key, "
            f"string.find(key, '}}', {len(shape.head) + 2}, true) + {len(shape.tail) + 1}) end"
        )
    return "\n".join(lines) + "\n"
