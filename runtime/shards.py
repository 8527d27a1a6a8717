"""What a shard is: the runs, their jobs and the queues holding those jobs that share one hash tag.

Every write a step makes (its result, the run's record, the next job on its queue) is one Lua call,
so a run's keys, its jobs' keys and the queue entries of those jobs must live in one Redis Cluster
slot. A *shard* is that slot's share of stepq: a hash tag (``SHARD_TAGS``) that every key of its
runs, of their jobs, of its part of each queue and of its indexes (active/done runs, timers, waits)
carries. Scripts on the step path touch the keys of one shard only.

A run's shard is written in its id, so that anything holding a run id or a job id (job ids start
with their run's id) finds the shard with no lookup: the last character of a run id, a ULID, is
the shard's number in Crockford's base32 (so at most ``SHARD_LIMIT`` shards). New runs take their
shard among the first ``SHARD_COUNT``; growing the count later leaves every existing run where it
is. A process learns its count when it opens Redis (``runtime.connection.open_redis`` calls
``configure``): ``SHARD_LIMIT`` on a Redis Cluster, 1 on a single Redis (or the count a single Redis
holds under ``keys.SHARD_COUNT``, a testing aid that exercises the sharded paths on one server).
"""

from __future__ import annotations

import itertools
import string

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from stepq.ids import CROCKFORD, new_ulid

#: How many shards a run id can name (one base32 character).
SHARD_LIMIT = len(CROCKFORD)
#: The shards new runs are spread over; workers serve all of them (set by ``configure``).
SHARD_COUNT = 1

_VALUE = {char: value for value, char in enumerate(CROCKFORD)}


def _spread_tags() -> tuple[str, ...]:
    """One hash tag per shard, chosen so that shard k's slot lies in the k-th of ``SHARD_LIMIT``
    equal parts of Redis Cluster's slots: a cluster that splits its slots evenly over its masters
    (as ``redis-cli --cluster create`` does) spreads the shards evenly too. Each is the shard's number
    in two digits and two letters (``TAG_WIDTH`` characters: the scripts slice them from one string)."""
    span = REDIS_CLUSTER_HASH_SLOTS // SHARD_LIMIT
    tags = []
    for shard in range(SHARD_LIMIT):
        for letters in itertools.product(string.ascii_lowercase, repeat=2):
            tag = f"{shard:02d}{''.join(letters)}"
            if shard * span <= key_slot(tag.encode()) < (shard + 1) * span:
                tags.append(tag)
                break
        else:  # pragma: no cover - 676 candidates per 512-slot range always hold one
            raise RuntimeError(f"no hash tag found for shard {shard}")
    return tuple(tags)


TAG_WIDTH = 4
#: The hash tag of each shard (``stepq:{<tag>}:run:<run id>``...).
SHARD_TAGS = _spread_tags()


def shard_of(run_or_job_id: str) -> int:
    """The shard of a run, given its id or the id of one of its jobs (``<run id>:...``).

    An id that is not one of stepq's (no base32 character where the shard's is) names shard 0; no
    such run exists, so a lookup of it finds nothing, as any unknown id."""
    run_id = run_or_job_id.partition(":")[0]
    return _VALUE.get(run_id[-1:].upper(), 0)


def tag_of(run_or_job_id: str) -> str:
    """The hash tag of ``shard_of(run_or_job_id)``."""
    return SHARD_TAGS[shard_of(run_or_job_id)]


def new_run_id(now_ms: int | None = None, shard: int = 0) -> str:
    """A ULID for a new run of ``shard``: its last character names the shard (75 random bits remain).
    Which shard a new run takes is runtime/placement.py's choice."""
    if not 0 <= shard < SHARD_LIMIT:
        raise ValueError(f"shard {shard} is out of range (0..{SHARD_LIMIT - 1})")
    return new_ulid(now_ms)[:-1] + CROCKFORD[shard]


def event_shard(event_id: str) -> int:
    """The shard holding a stored event (its record, outcomes): named by its id as a run's is. An id
    stepq did not make (a cron tick's ``cron:<slug>:<ms>``) maps onto the shards served."""
    return shard_of(event_id) % len(shards())


def configure(count: int) -> None:
    """Use ``count`` shards in this process (1..``SHARD_LIMIT``): new runs spread over them, workers
    serve them and queries read them. Called when the process opens Redis, before any run is made."""
    global SHARD_COUNT
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= SHARD_LIMIT:
        raise ValueError(f"the shard count must be a whole number from 1 to {SHARD_LIMIT}, got {count!r}")
    SHARD_COUNT = count


def parse_count(raw: bytes | str, where: str) -> int:
    """A shard count as stored in Redis (``where`` names the key, for the error)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        count = int(text.strip())
    except ValueError:
        count = 0
    if not 1 <= count <= SHARD_LIMIT:
        raise ValueError(f"{where} holds {text!r}: a shard count must be a whole number from 1 to {SHARD_LIMIT}")
    return count


def shards() -> range:
    """The shards workers serve and queries read."""
    return range(SHARD_COUNT)


def lua_prelude() -> str:
    """``tag_of(id)`` in Lua (generated from ``SHARD_TAGS``), and ``tag_of_key(key)``: the hash tag
    a key carries. Strings, not a table: a script's prelude runs at every call, and a table would be
    built each time."""
    return (
        f"local SHARD_CHARS, SHARD_TAGS = '{CROCKFORD}', '{''.join(SHARD_TAGS)}'\n"
        "local function tag_of(id)\n"
        "  local last = string.upper(string.sub(string.match(id, '^[^:]*'), -1))\n"
        "  local shard = last ~= '' and string.find(SHARD_CHARS, last, 1, true) or 1\n"
        f"  return string.sub(SHARD_TAGS, shard * {TAG_WIDTH} - {TAG_WIDTH - 1}, shard * {TAG_WIDTH})\n"
        "end\n"
        "local function tag_of_key(key) return string.match(key, '{([^}]*)}') end\n"
    )
