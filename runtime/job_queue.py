"""One arq queue as a worker sees it: claim the due jobs, wait for more, renew and end them.

The queue is arq's: a sorted set of job ids scored by due time, each job's payload under
``arq:job:<id>``, a running job's lock under ``arq:in-progress:<id>`` and its tries under
``arq:retry:<id>``. Three additions let workers wait without polling:

- the ready list (``keys.ready``): an enqueue pushes a token when its job is due (prelude.lua
  ``signal_queue``); idle workers block on the list, so a new job reaches one at once;
- a claimed job's score moves to the end of its lease (claim_jobs.lua), so the due part of the queue
  holds only jobs nobody runs, and a job whose worker died comes due again by itself;
- the mover (``keys.mover``): one worker at a time keeps a timer at the queue's earliest delayed job
  (a retry, a sleep's end, a lapsed lease), wakes when it is due and claims it, or, with no free slot,
  leaves a token for another worker. A delayed job due before the mover means to wake pushes a
  token, and the worker it wakes becomes the mover. A mover whose wake time passed more than
  ``MOVER_GRACE_MS`` ago died (a live one claims then, which moves its wake time on): any claim
  takes its role over. On a sharded deployment, workers learn of such a shard from a hint that
  movers keep in one key (``keys.mover_watch``; workers/mover_watch.py).

The claim also loads each job's run (load_run in prelude.lua; ``ClaimedJob.preload``), so that a
job claimed from the queue starts without another round trip, as a job handed over by a commit does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from . import keys
from .connection import RedisClient
from .scripts import Scripts
from .store import CachedRun, ClaimLoad, now_ms

#: How many due entries one claim looks at (jobs nobody runs; see the module docstring).
SCAN_LIMIT = 1000
#: How many of the worker's cached runs a claim tells Redis about (``JobQueue.claim``).
KNOWN_RUNS = 32
#: A mover whose wake time passed this long ago is taken for dead: a claim takes its role over.
#: (A live mover claims at its wake time, a few milliseconds late at most on a busy worker.)
MOVER_GRACE_MS = 2000


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker now holds the lease of."""

    job_id: str
    #: The job's bytes as arq stores them (``arq:job:<id>``).
    payload: bytes
    #: arq's try counter: 1 on the job's first run.
    job_try: int
    #: When the job was due (ms since the epoch).
    score: int
    #: The state the job's function would otherwise load (opaque here: a ``ClaimLoad`` when the
    #: claim loaded the job's run, None when it did not).
    preload: object = None


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """What one claim got."""

    jobs: list[ClaimedJob]
    #: (member, why) for entries no worker can run: for the dead letters.
    poison: list[tuple[bytes, str]]
    #: When this worker, as the queue's mover, is to wake for its earliest delayed job (None: it is
    #: not the mover, or there is no such job).
    wake_at_ms: int | None
    #: Whether this worker is the queue's mover now.
    mover: bool = False
    #: When the queue's mover (this worker or another) means to wake (None: not at all).
    mover_wake_ms: int | None = None
    #: With a chores check (``claim(chores_overdue_ms=...)``): an outbox message of the shard is
    #: due, a timer of the shard is overdue.
    outbox_due: bool = False
    timers_overdue: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class JobEnded:
    """What a job's function returns when the Lua call that committed its step also ended its job
    (the worker must not end it again) and, if it may, handed the worker the run's next job under a
    fresh lease: the worker runs ``next_job`` in the same slot, without a claim or a load.
    ``preload`` is the state the next job's function would otherwise load (opaque here)."""

    next_job: ClaimedJob | None = None
    preload: object = None


def _why(member: bytes, reason: bytes) -> str:
    """What is wrong with a poison entry, the most telling first."""
    try:
        member.decode()
    except UnicodeDecodeError:
        return "queue member is not UTF-8"
    return reason.decode(errors="backslashreplace")


def _plain(run_id: str) -> bool:
    """A run id the claim's list of known runs can carry (stepq's are ULIDs)."""
    return " " not in run_id and "\n" not in run_id


def _claim_load(entry: list[bytes] | None, view: Mapping[str, CachedRun]) -> ClaimLoad | None:
    """A claimed job's load from its claim entry (None: the claim did not load it)."""
    if not entry:
        return None
    run_id, sent = entry[0].decode(errors="replace"), int(entry[1])
    known = view.get(run_id)
    if sent >= 0 and (known is None or len(known.stack) != sent):
        return None  # no snapshot to merge into (cannot happen): the job's own load reads it again
    return ClaimLoad(run_id, entry[2:], known if sent >= 0 else None)


class JobQueue:
    """Claims, renews and ends the jobs of one shard's part of a queue for one worker (its ``lease_token``)."""

    def __init__(
        self,
        redis: RedisClient,
        scripts: Scripts,
        queue_id: str,
        *,
        shard: int,
        lease_token: str,
        lease_ms: int,
        mover_lease_ms: int,
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.queue_id = queue_id
        self.shard = shard
        self.name = keys.queue(shard, queue_id)
        self.ready_key = keys.ready(shard, queue_id)
        self.mover_key = keys.mover(shard, queue_id)
        self.wake_at_key = keys.wake_at(shard, queue_id)
        #: The shard's keys a claim's chores check reads (its slot: see claim_jobs.lua).
        self.chore_keys = (keys.outbox(shard), keys.timers(shard))
        self.lease_token = lease_token
        self.lease_ms = lease_ms
        #: The mover's lease: each of the mover's claims renews it.
        self.mover_lease_ms = mover_lease_ms

    async def claim(
        self,
        free: int,
        *,
        tidy: bool = True,
        known: Mapping[str, CachedRun] | None = None,
        held: Collection[str] = (),
        chores_overdue_ms: int | None = None,
    ) -> Claim:
        """Claim up to ``free`` due jobs (``free`` may be 0: the mover's timer fired on a full worker),
        each with its run loaded (``ClaimedJob.preload``).

        ``tidy``: drop wake-up tokens left when nothing is left to claim (False when the caller
        just found the ready list empty, to save the idle check a write). ``known``: runs whose
        history the worker has cached (see ``KNOWN_RUNS``); ``held``: the jobs it runs now (a claim
        of one of them, whose lease lapsed, loads nothing: the worker holds the run's fence).
        ``chores_overdue_ms``: also look whether the shard's outbox has a message due, and its
        timers one overdue by that long (``Claim.outbox_due``, ``Claim.timers_overdue``)."""
        # Which memo entries may a load leave out? load_run is told, per run, how many the worker
        # has; a claim learns its runs only in Redis. Telling it the whole cache (up to 1,024 runs)
        # would cost every claim; telling it nothing would send the whole memo of every claimed
        # job. The cold jobs whose run a worker has cached are mostly that run's own delayed jobs
        # (wake-ups, retries, parallel steps) of the runs it advanced last, so a claim names the
        # KNOWN_RUNS runs the worker used last (~1 KB) and gets the whole memo of any other run,
        # as a worker that never saw the run would. Either way it is right: each named run's length
        # is that of a snapshot (``CachedRun`` never changes) that the reply is merged into, however
        # the cache changes meanwhile.
        view = {run_id: run for run_id, run in known.items() if _plain(run_id)} if free > 0 and known else {}
        # one argument, not two per run: redis-py encodes each argument apart, which costs more
        lengths = "\n".join(f"{run_id} {len(run.stack)}" for run_id, run in view.items())
        jobs, raw_poison, wake_at, mover_wake, chores = await self.scripts.call(
            "claim_jobs",
            [self.name, self.ready_key, self.mover_key, self.wake_at_key, *self.chore_keys],
            [
                now_ms(),
                self.lease_ms,
                free,
                self.lease_token,
                self.mover_lease_ms,
                SCAN_LIMIT,
                int(tidy),
                lengths,
                MOVER_GRACE_MS,
                "" if chores_overdue_ms is None else chores_overdue_ms,
                *(held if free > 0 else ()),
            ],
        )
        claimed: list[ClaimedJob] = []
        poison = [(raw_poison[i], _why(raw_poison[i], raw_poison[i + 1])) for i in range(0, len(raw_poison), 2)]
        for i in range(0, len(jobs), 5):
            try:
                job_id = jobs[i].decode()
            except UnicodeDecodeError:
                poison.append((jobs[i], "queue member is not UTF-8"))
                continue
            preload = _claim_load(jobs[i + 4], view)
            claimed.append(ClaimedJob(job_id, jobs[i + 1], int(jobs[i + 2]), int(float(jobs[i + 3])), preload))
        wake, shard_wake = int(wake_at), int(mover_wake)
        return Claim(
            claimed,
            poison,
            wake if wake >= 0 else None,
            mover=wake != -2,
            mover_wake_ms=shard_wake if shard_wake >= 0 else None,
            outbox_due=bool(int(chores) & 1),
            timers_overdue=bool(int(chores) & 2),
        )

    async def wait_ready(self, client: RedisClient, timeout_s: float) -> bool:
        """Block on the ready list (on ``client``, whose connection the wait holds) for at most
        ``timeout_s``; True when a token came."""
        # Redis 6+ takes a fractional timeout; redis-py's hints say int.
        return await client.blpop([self.ready_key], timeout=timeout_s) is not None  # type: ignore[misc, arg-type]

    async def renew(self, job_ids: Sequence[str]) -> list[bool]:
        """Extend the leases of ``job_ids``; False for each this worker does not hold any more (True
        for one that ended meanwhile: its commit, racing this call, ended it)."""
        flags = await self.scripts.call(
            "renew_leases",
            [self.name, *(keys.in_progress(job_id) for job_id in job_ids)],
            [self.lease_token, self.lease_ms, now_ms(), *job_ids],
        )
        return [bool(flag) for flag in flags]

    async def end(self, job_id: str, *, again_in_ms: int | None = None) -> bool:
        """End a job this worker ran: done (``again_in_ms`` None), or back on the queue to run again
        after ``again_in_ms``. False when the job is not this worker's any more (its lease lapsed
        and another worker took it: that worker ends it)."""
        how = "finish" if again_in_ms is None else "again"
        ended = await self.scripts.call(
            "finish_job",
            [keys.in_progress(job_id), keys.retry(job_id), keys.job(job_id), self.name],
            [self.lease_token, how, again_in_ms or 0, now_ms()],
        )
        return bool(ended == b"ok")

    async def release_mover(self) -> bool:
        """Give up the mover role, if this worker holds it, and wake another worker to take it."""
        released = await self.scripts.call(
            "release_mover",
            [self.mover_key, self.wake_at_key, self.ready_key],
            [self.lease_token],
        )
        return bool(released)

    async def repair_wake_keys(self) -> list[str]:
        """Delete the queue's wake-up keys that hold the wrong type (they hold only wake-up state,
        rebuilt by the next claim); returns the keys deleted."""
        expected = {self.ready_key: "list", self.mover_key: "string", self.wake_at_key: "string"}
        wrong = []
        for key, kind in expected.items():
            found = (await self.redis.type(key)).decode()
            if found not in (kind, "none"):
                wrong.append(key)
        if wrong:
            await self.redis.delete(*wrong)
        return wrong
