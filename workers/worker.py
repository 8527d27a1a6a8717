"""The worker process: take the jobs of one queue, run them, with leases, draining and reconnects.

stepq keeps arq's job model (its queue, job format, locks and ``Retry``; see ``runtime/job_queue.py``)
and runs jobs with a loop of its own, because arq's worker polls (a command every few milliseconds
per idle worker, and a poll delay before each step), claims each job in several round trips, and has
no hook for what follows. ``StepqWorker``:

- serves every shard of the queue (runtime/shards.py: one on a single Redis, 32 on a cluster),
  each a ``Lane``: waits for work on a blocking read of each shard's ready list (no polling when
  idle, no poll delay when busy; the shards' idle checks spread out), claims from the shards in
  rotating order within one concurrency budget; one worker at a time per shard (the mover) keeps
  a timer at the shard's earliest delayed job; with many shards, every worker watches the movers'
  published wake times and takes over in seconds a shard whose mover died
  (``stepq.workers.mover_watch``);
- claims due jobs, with their payloads, in one Lua call (``JobQueue.claim``), and runs each with
  arq's job context (``workers/job_task.py``);
- holds a short lease per running job (``lease_s``, 10 s) renewed by a heartbeat, so a killed
  worker's step runs elsewhere within seconds while an hour-long step keeps its lock;
- drains on SIGTERM/SIGINT (take no jobs, let running steps finish within ``drain_grace_s``, then
  hand the rest back so another worker retries them at once); a second SIGINT forces;
- survives every Redis error: a lost connection, and replies such as OOM, READONLY, WRONGTYPE, BUSY
  or a script error, are logged once per kind and retried with a bounded backoff in every loop
  (``stepq.workers.faults``); poison queue entries go to the dead letters
  (``stepq.runtime.deadletter``);
- has a watchdog that notices within seconds that Redis stopped answering, even when the link went
  dark without a reset (``stepq.workers.watchdog``);
- restores the app's registration after Redis comes back empty (``stepq.workers.registration``);
- keeps its readiness for its probes (``stepq.workers.health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog

from stepq.client import Client
from stepq.runtime import deadletter, keys, lifecycle, outbox, timers, waits
from stepq.runtime.app_urls import AppUrlPolicy
from stepq.runtime.connection import RedisClient, close, open_redis
from stepq.runtime.cron import CronScheduler, cron_functions
from stepq.runtime.job_queue import KNOWN_RUNS, Claim, ClaimedJob, JobQueue
from stepq.runtime.jobs import ADVANCE
from stepq.runtime.limits import Limits
from stepq.runtime.redis_errors import error_kind
from stepq.runtime.redis_urls import redact
from stepq.runtime.registry import Registry
from stepq.runtime.shards import shard_of, shards
from stepq.runtime.store import RunCache, RunStore
from stepq.runtime.transport import RedisTransport

from . import tracing
from .executor import Executor
from .faults import REDIS_DOWN, REDIS_TROUBLE, Faults, until_redis_answers
from .health import Health
from .http_invoker import HttpInvoker
from .invoker import InProcessInvoker, Invoker
from .job_task import JobFunction, JobRunner
from .metrics import lease_lost
from .mover_watch import MoverWatch
from .options import WorkerOptions
from .registration import RegistrationKeeper
from .remote import FunctionSource, LocalFunctions, RegisteredFunctions
from .shard_chores import CLAIM_CHECK_S, ShardChore
from .task_dump import log_tasks
from .watchdog import RedisWatchdog, ping

log = structlog.get_logger("stepq.worker")

__all__ = ["REDIS_DOWN", "StepqWorker", "WorkerOptions", "build_http_worker", "build_worker", "until_redis_answers"]

#: How often a worker looks for due cron ticks (checks between ticks cost no Redis call).
CRON_CHECK_S = 0.1
#: The executor's limit on an invocation is the step timeout plus this (the HTTP client's comes first).
STEP_TIMEOUT_MARGIN_S = 5.0
#: At most this many jobs per claim: a burst of new runs spreads over the idle workers (each claim
#: leaves a token for the next) instead of going whole to the first worker that wakes, which would
#: keep them (a run's next job is handed to the worker that ran its step).
CLAIM_BATCH = 8
#: How often a worker serving HTTP functions re-reads which of them have cron triggers.
CRON_REFRESH_S = 10.0
#: While Redis is unreachable, the poll loop waits this long at a time for the watchdog's all-clear.
UNREACHABLE_WAIT_S = 1.0


@dataclasses.dataclass(eq=False)
class Lane:
    """One shard's part of the queue, and what this worker knows of it."""

    queue: JobQueue
    #: How long the first wait on its ready list lasts (the shards' idle checks are staggered).
    first_wait_s: float
    #: Claim from it now: a token came, its idle check is due, Redis is back, a slot freed after a
    #: full claim.
    claim_now: bool = False
    #: The next claim is its idle check (its ready list was found empty).
    idle_check: bool = False
    #: The last claim filled every free slot: due jobs may remain, claim when a slot frees.
    backlog: bool = False
    #: As the shard's mover: when its earliest delayed job is due (ms), else None.
    wake_at_ms: int | None = None
    #: The next claim is because the mover watch found the shard's mover overdue.
    watched: bool = False
    #: After a failed claim: not before this (ms), so that a shard whose master is down waits
    #: alone while the other shards' claims go on.
    retry_at_ms: float | None = None
    #: When a claim last looked for the shard's chores' work (monotonic s; see shard_chores.py).
    chores_checked_at: float = -math.inf
    faults: Faults = dataclasses.field(default_factory=lambda: Faults("claim"))


class StepqWorker:
    """Takes the jobs of one queue and runs them (see the module docstring)."""

    def __init__(
        self,
        *,
        queue_id: str,
        pool: RedisClient,
        store: RunStore,
        functions: Mapping[str, JobFunction],
        options: WorkerOptions,
        job_timeout_s: float,
        on_startup: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        cron: CronScheduler | None = None,
        cron_source: Callable[[], Awaitable[list[tuple[str, ...]]]] | None = None,
        registration: RegistrationKeeper | None = None,
        handle_signals: bool = True,
        run_cache: RunCache | None = None,
        outbox_sweeper: outbox.Sweeper | None = None,
        health: Health | None = None,
    ) -> None:
        self.pool = pool
        #: Delivers the outbox messages whose senders died (runtime/outbox.py).
        self.outbox_sweeper = outbox_sweeper
        self.store = store
        self.options = options
        self.on_startup = on_startup
        self.cron = cron
        #: Re-reads the cron functions now and then (functions served over HTTP).
        self.cron_source = cron_source
        #: Keeps the app's registration in Redis (None for workers of functions served over HTTP).
        self.registration = registration
        self.handle_signals = handle_signals
        #: The executor's cache of runs: each claim names the runs used last, so that the loads it
        #: makes send only the memo entries this worker lacks (``JobQueue.claim``).
        self.run_cache = run_cache
        #: The value of the in-progress locks this worker holds: a job is this worker's to renew and
        #: to end only while its lock carries this token.
        self.lease_token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.queue_id = queue_id
        served = shards()
        #: How long each shard's ready list is blocked on at a time: the idle check of one shard.
        #: Spread over the shards (``idle_check_s`` times their number, first ones staggered), so an
        #: idle worker checks one shard per ``idle_check_s`` whatever their number: one Redis costs
        #: what it did; a cluster's 32 shards cost the same, each checked 32 times less often.
        self.shard_idle_s = options.idle_check_s * len(served)
        #: Each shard's part of the queue, with this worker's state for it, in shard order.
        self.lanes = [
            Lane(
                JobQueue(
                    pool,
                    store.scripts,
                    queue_id,
                    shard=shard,
                    lease_token=self.lease_token,
                    lease_ms=int(options.lease_s * 1000),
                    # renewed at every idle check of the shard; short, so that a dead mover's role
                    # (and its timers) moves on soon
                    mover_lease_ms=int(2.5 * self.shard_idle_s * 1000),
                ),
                first_wait_s=options.idle_check_s * (i + 1),
            )
            for i, shard in enumerate(served)
        ]
        self._lane_of_shard = {lane.queue.shard: lane for lane in self.lanes}
        #: With many shards (each checked only every ``shard_idle_s``), the watch on their movers.
        self.mover_watch = (
            MoverWatch(pool, queue_id, served, period_s=options.idle_check_s, on_overdue=self._movers_overdue)
            if len(served) > 1
            else None
        )
        #: Where the next round of claims starts (rounds rotate, so no shard's jobs come first always).
        self._next_lane = 0
        #: arq's worker context, which every job's context extends; stepq's writes that end a job
        #: (and hand over the next) need the lease.
        self.ctx: dict[str, Any] = {
            "redis": pool,
            "lease_token": self.lease_token,
            "lease_ms": self.lanes[0].queue.lease_ms,
        }
        self.runner = JobRunner(self.queue_of, functions, timeout_s=job_timeout_s, ctx=self.ctx)
        #: Chores done for each shard in turn (``ShardChore``), which claims look for work of too.
        self.timers_chore = ShardChore("timers", options.timer_sweep_s, self._sweep_timers)
        self.outbox_chore = (
            None
            if outbox_sweeper is None
            else ShardChore(
                "outbox",
                options.outbox_sweep_s,
                outbox_sweeper.visit,
                min_gap_s=min(outbox.SWEEP_MIN_GAP_S, options.outbox_sweep_s),
            )
        )
        self.chores = [chore for chore in (self.timers_chore, self.outbox_chore) if chore is not None]
        #: Chores' visits a claim found work for, running.
        self._visits: set[asyncio.Task[None]] = set()
        self.watchdog = RedisWatchdog(
            pool,
            interval_s=options.redis_check_s,
            timeout_s=options.redis_check_timeout_s,
            probe=registration.probe if registration is not None else ping,
        )
        self.watchdog.on_back.append(self._reconnected)
        #: What the worker's endpoint answers to ``/livez`` and ``/readyz`` (``stepq.workers.endpoint``);
        #: the heartbeat is its caller's to run (the endpoint answers before the worker is built).
        self.health = health or Health(options.liveness_timeout_s)
        self.health.watch(lambda: self.watchdog.reachable)
        #: The jobs running now, by id.
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._draining = False
        #: Some lane is to claim now (``Lane.claim_now`` says which).
        self._claim_now = asyncio.Event()
        #: Set while this worker has a free slot and takes jobs (the ready lists are read only then).
        self._room = asyncio.Event()
        self._room.set()
        self._renew_now = asyncio.Event()
        self._listen_back = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._dead_letter_faults = Faults("dead-letter")

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (a drain), then close."""
        asyncio.run(self.serve())

    async def serve(self) -> None:
        """``run`` in the running event loop (the one the worker's Redis client was opened in)."""
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.handle_signal, signum)
            loop.add_signal_handler(signal.SIGUSR1, log_tasks)
        try:
            await self.main()
        finally:
            await self.close()

    async def main(self) -> None:
        """Wait for Redis, start, take and run jobs until a drain, then drain."""
        self._background = [asyncio.create_task(self.watchdog.run(), name="stepq-watchdog")]
        await until_redis_answers(self.pool.ping)
        served = [lane.queue.shard for lane in self.lanes]
        self._background += [
            asyncio.create_task(self._renew_leases(), name="stepq-leases"),
            *(
                asyncio.create_task(chore.run(served, lambda: self.watchdog.reachable), name=f"stepq-{chore.name}")
                for chore in self.chores
            ),
        ]
        if self.cron is not None and (self.cron.functions or self.cron_source is not None):
            self._background.append(asyncio.create_task(self._fire_cron(), name="stepq-cron"))
        if self.mover_watch is not None:
            self._background.append(
                asyncio.create_task(self.mover_watch.run(lambda: self.watchdog.reachable), name="stepq-mover-watch")
            )
        try:
            if self.on_startup:
                await self.on_startup(self.ctx)
            if self.registration is not None:
                self._background.append(asyncio.create_task(self.registration.run(), name="stepq-registration"))
            self.health.started = True
            self._background += [
                asyncio.create_task(self._listen(lane), name=f"stepq-listen-{lane.queue.shard}") for lane in self.lanes
            ]
            self._claim_soon(self.lanes)  # jobs may be due already
            await self._take_jobs()
            await self._drain()
        finally:
            for task in (*self._background, *self._visits):
                task.cancel()
            await asyncio.gather(*self._background, *self._visits, return_exceptions=True)

    def handle_signal(self, signum: int) -> None:
        """First SIGTERM/SIGINT drains; a second SIGINT hands back running steps at once."""
        if self._draining:
            if signum == signal.SIGINT:
                log.warning("worker.forced", running=len(self.tasks))
                for task in self.tasks.values():
                    task.cancel()
            return
        log.info("worker.draining", running=len(self.tasks), grace_s=self.options.drain_grace_s)
        self.stop()

    def stop(self) -> None:
        """Drain: take no more jobs, let running ones finish within the grace period, then exit."""
        self._draining = True
        self.health.draining = True
        self.runner.stopping = True
        self._room.clear()
        self._claim_now.set()

    async def _drain(self) -> None:
        running = list(self.tasks.values())
        if running:
            _, late = await asyncio.wait(running, timeout=self.options.drain_grace_s)
            # Past the grace: cancelled jobs go back on the queue, due now, for another worker.
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(*REDIS_TROUBLE, TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(lane.queue.release_mover() for lane in self.lanes)), self.options.redis_check_timeout_s
            )

    async def close(self) -> None:
        """Close the connections; a Redis that fails the last clean-up does not turn a clean
        shutdown into a traceback."""
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.watchdog.aclose()
        with contextlib.suppress(*REDIS_TROUBLE, TimeoutError):
            await close(self.pool)

    def _reconnected(self) -> None:
        """Redis answers again after an outage: claim, renew leases and check the registration now."""
        for lane in self.lanes:
            lane.retry_at_ms = None
        self._claim_soon(self.lanes)
        self._listen_back.set()
        self._renew_now.set()
        if self.registration is not None:
            self.registration.refresh_soon()

    # -- taking jobs ------------------------------------------------------------------------------

    def queue_of(self, job_id: str) -> JobQueue:
        """The part of the queue (its shard's) that holds ``job_id``."""
        lane = self._lane_of_shard.get(shard_of(job_id))
        # every job claimed or handed over is of a served shard (claim_jobs.lua checks the id's tag)
        return lane.queue if lane is not None else self.lanes[0].queue

    def _movers_overdue(self, shards: list[int]) -> None:
        """The mover watch found these shards' movers overdue: claim there (and take their role)."""
        lanes = [self._lane_of_shard[shard] for shard in shards if shard in self._lane_of_shard]
        for lane in lanes:
            lane.watched = True
        self._claim_soon(lanes)

    def _claim_soon(self, lanes: Iterable[Lane]) -> None:
        for lane in lanes:
            lane.claim_now = True
        self._claim_now.set()

    async def _take_jobs(self) -> None:
        while not self._draining:
            if not self.watchdog.reachable:
                # Commands would hang until Redis is back: claim nothing, wait for the watchdog.
                await self.watchdog.wait_until_reachable(UNREACHABLE_WAIT_S)
                continue
            # (milliseconds as a float: a truncated clock would sleep up to 1 ms past the timer)
            now = time.time() * 1000
            self._claim_now.clear()
            # one round: every lane with something to claim, from where the last round left off
            count, first = len(self.lanes), self._next_lane
            claimed_any = False
            for i in range(count):
                lane = self.lanes[(first + i) % count]
                if lane.retry_at_ms is not None:
                    if now < lane.retry_at_ms:
                        continue
                    lane.retry_at_ms, lane.claim_now = None, True
                if lane.claim_now or (lane.wake_at_ms is not None and now >= lane.wake_at_ms):
                    lane.claim_now = False
                    await self._claim(lane, tidy=not lane.idle_check)
                    lane.idle_check = False
                    claimed_any = True
                    if self._draining:
                        return
            self._next_lane = (first + 1) % count
            if claimed_any or self._claim_now.is_set():
                continue
            # a lane backing off waits for its retry, whatever its mover's timer says
            times = (lane.wake_at_ms if lane.retry_at_ms is None else lane.retry_at_ms for lane in self.lanes)
            wake = min((at for at in times if at is not None), default=None)
            timeout = None if wake is None else (wake - now) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_now.wait(), timeout)

    async def _claim(self, lane: Lane, *, tidy: bool) -> None:
        """Claim what fits in the free slots from one shard (none when full: the claim then wakes
        another worker for the due jobs, and keeps the mover's timer)."""
        free = max(0, self.options.concurrency - len(self.tasks))
        # at most once per CLAIM_CHECK_S, the claim also looks for the shard's chores' work
        check_chores = time.monotonic() - lane.chores_checked_at >= CLAIM_CHECK_S
        try:
            known = self.run_cache.recent(KNOWN_RUNS) if self.run_cache is not None and free else None
            claim = await lane.queue.claim(
                min(free, CLAIM_BATCH),
                tidy=tidy,
                known=known,
                held=self.runner.held,
                chores_overdue_ms=int(self.options.timer_overdue_s * 1000) if check_chores else None,
            )
        except REDIS_TROUBLE as exc:
            if await self._repaired(lane, exc):
                self._claim_soon((lane,))
            else:  # this shard waits; the others' claims go on
                lane.retry_at_ms = time.time() * 1000 + 1000 * lane.faults.failed(exc, shard=lane.queue.shard)
            return
        if lane.faults.failing:
            lane.faults.succeeded()
        if check_chores:
            lane.chores_checked_at = time.monotonic()
            self._chores_checked(lane.queue.shard, claim)
        lane.wake_at_ms = claim.wake_at_ms
        if self.mover_watch is not None:
            self.mover_watch.claimed(lane.queue.shard, claim, watched=lane.watched)
        lane.watched = False
        # A full claim may have left due jobs: when this worker has no room, it claims again as a
        # slot frees; when it has room, the claim left a token on the ready list, which the
        # longest-waiting idle worker gets (this one too, if it is the only one): load balancing.
        lane.backlog = len(claim.jobs) >= free
        for job in claim.jobs:
            self._start(job)
        for member, why in claim.poison:
            await self._dead_letter(lane, member, why)

    def _chores_checked(self, shard: int, claim: Claim) -> None:
        """A claim looked for the shard's chores' work: visit now where it found some."""
        for chore, found in ((self.timers_chore, claim.timers_overdue), (self.outbox_chore, claim.outbox_due)):
            if chore is None:
                continue
            chore.checked(shard)
            if found and not self._draining:
                visit = asyncio.create_task(chore.visit(shard), name=f"stepq-{chore.name}-{shard}")
                self._visits.add(visit)
                visit.add_done_callback(self._visits.discard)

    def _start(self, job: ClaimedJob) -> None:
        if job.job_id in self.runner.held:
            # This worker still runs it (its lease lapsed while Redis was away): the lock is ours again.
            return
        task = asyncio.create_task(self.runner.run(job), name=f"stepq-job:{job.job_id}")
        self.tasks[job.job_id] = task
        task.add_done_callback(functools.partial(self._ended, job.job_id))
        if len(self.tasks) >= self.options.concurrency:
            self._room.clear()

    def _ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(job_id) is task:
            del self.tasks[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("job.ended_with_error", job_id=job_id, error=repr(task.exception()))
        if not self._draining and len(self.tasks) < self.options.concurrency:
            self._room.set()
            for lane in self.lanes:
                if lane.backlog:
                    lane.claim_now = True
                    self._claim_now.set()

    async def _listen(self, lane: Lane) -> None:
        """Block on one shard's ready list while this worker has room; a token, or the shard's idle
        check (``shard_idle_s`` without one), makes it claim from that shard."""
        faults = Faults("wait")
        wait_s = lane.first_wait_s
        while True:
            await self._room.wait()
            if not self.watchdog.reachable:
                await self.watchdog.wait_until_reachable(UNREACHABLE_WAIT_S)
                continue
            self.watchdog.blocking(wait_s)
            try:
                token = await lane.queue.wait_ready(self.pool, wait_s)
            except REDIS_TROUBLE as exc:
                if not await self._repaired(lane, exc):
                    # back off, but not past Redis's return (the watchdog says)
                    self._listen_back.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._listen_back.wait(), faults.failed(exc, shard=lane.queue.shard))
                continue
            wait_s = self.shard_idle_s
            lane.retry_at_ms = None  # its master answers
            self.watchdog.answered()
            if faults.failing:
                faults.succeeded()
            lane.idle_check = not token and not lane.claim_now
            self._claim_soon((lane,))

    # -- poison -----------------------------------------------------------------------------------

    async def _repaired(self, lane: Lane, exc: BaseException) -> bool:
        """After a WRONGTYPE: move a queue key of the wrong type aside, or delete wake-up keys of the
        wrong type; True when something was fixed (claim again at once)."""
        if error_kind(exc) != "WRONGTYPE":
            return False
        try:
            queue = lane.queue
            letter = await deadletter.move_queue(
                self.store.scripts, queue.shard, queue.queue_id, "queue key is not a sorted set"
            )
            if letter is not None:
                log.error("queue.moved_aside", queue=queue.name, moved_to=letter.moved_to, type=letter.key_type)
                return True
            deleted = await queue.repair_wake_keys()
        except REDIS_TROUBLE as again:
            self._dead_letter_faults.failed(again)
            return False
        if deleted:
            log.error("queue.wake_keys_reset", queue=queue.name, keys=deleted, detail="they held the wrong type")
        return bool(deleted)

    async def _dead_letter(self, lane: Lane, member: bytes, reason: str) -> None:
        """Move a poison member aside; if Redis refuses, leave it (it is skipped) and try next claim."""
        queue = lane.queue
        try:
            letter = await deadletter.move_member(self.store.scripts, queue.shard, queue.name, member, reason)
        except REDIS_TROUBLE as exc:
            self._dead_letter_faults.failed(exc, member=repr(member)[:200])
            return
        self._dead_letter_faults.succeeded()
        if letter is not None:
            log.error(
                "queue.dead_letter", queue=queue.name, member=letter.member_text, score=letter.score, reason=reason
            )

    # -- background -------------------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        """Extend the lock of every job this process runs, every third of the lease: one call per
        shard that has running jobs (a script touches one shard's keys)."""
        faults = Faults("leases")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), self.options.lease_s / 3)
            self._renew_now.clear()
            if not self.runner.held or not self.watchdog.reachable:
                continue
            by_queue: dict[JobQueue, list[str]] = {}
            for job_id in self.runner.held:
                by_queue.setdefault(self.queue_of(job_id), []).append(job_id)
            # each shard's renewal bounded: a master that hangs (a frozen machine: its kernel still
            # accepts the bytes) must not hold up the leases of every other shard's jobs
            timeout_s = self.options.redis_check_timeout_s
            replies = await asyncio.gather(
                *(asyncio.wait_for(queue.renew(job_ids), timeout_s) for queue, job_ids in by_queue.items()),
                return_exceptions=True,
            )
            for (queue, job_ids), renewed in zip(by_queue.items(), replies, strict=True):
                if isinstance(renewed, BaseException):
                    if isinstance(renewed, REDIS_TROUBLE):
                        faults.failed(renewed, jobs=len(job_ids), shard=queue.shard)
                    elif isinstance(renewed, Exception):  # a bug: the next round renews again
                        log.error("leases.renew_failed", shard=queue.shard, error=repr(renewed))
                    else:
                        raise renewed
                    continue
                faults.succeeded()
                for job_id, ok in zip(job_ids, renewed, strict=True):
                    if not ok and job_id in self.runner.held and job_id not in self.runner.lost:
                        # Another worker may run this job now; our commit will be fenced off, and the
                        # job is that worker's to end.
                        self.runner.lost.add(job_id)
                        log.warning("lease.lost", job_id=job_id)
                        lease_lost(self.queue_id)

    async def _sweep_timers(self, shard: int) -> None:
        """Re-enqueue the shard's overdue wake-ups whose job vanished (a ``ShardChore``)."""
        await timers.revive_shard(
            self.pool, self.store.scripts, shard, overdue_ms=int(self.options.timer_overdue_s * 1000)
        )

    async def _fire_cron(self) -> None:
        """Start the runs of due cron ticks; every worker does, and each tick's claim admits one run."""
        assert self.cron is not None
        refreshed = 0.0
        faults = Faults("cron")
        while True:
            await asyncio.sleep(max(CRON_CHECK_S, faults.delay_s))
            if not self.watchdog.reachable:
                continue
            try:
                if self.cron_source is not None and time.monotonic() - refreshed > CRON_REFRESH_S:
                    # functions served over HTTP come and go with their apps' syncs
                    self.cron = CronScheduler(self.store, await self.cron_source(), catch_up=self.cron.catch_up)
                    refreshed = time.monotonic()
                await self.cron.fire_due()  # a run it creates wakes a worker through the ready list
            except REDIS_TROUBLE as exc:
                faults.failed(exc)
            except Exception:
                log.exception("cron.check_crashed")
            else:
                if faults.failing or faults.delay_s:
                    faults.succeeded()


async def build_worker(
    client: Client,
    redis_url: str,
    options: WorkerOptions | None = None,
    *,
    limits: Limits | None = None,
    invoker: Invoker | None = None,
    handle_signals: bool = True,
    health: Health | None = None,
) -> StepqWorker:
    """A worker running ``client``'s functions in this process, from the app's queue; ``health``:
    the readiness its endpoint serves (one is made otherwise)."""
    functions = {fn.slug: fn for fn in client.functions.values()}
    return await _build(
        client.app_id,
        LocalFunctions(functions),
        invoker or InProcessInvoker(),
        redis_url,
        options,
        limits=limits,
        configs=[fn.config() for fn in functions.values()],
        crons=cron_functions(functions.values()),  # a bad cron expression fails here, naming the function
        handle_signals=handle_signals,
        health=health,
        app_client=client,
    )


async def build_http_worker(
    redis_url: str,
    options: WorkerOptions | None = None,
    *,
    signing_key: str | None = None,
    limits: Limits | None = None,
    handle_signals: bool = True,
    health: Health | None = None,
) -> StepqWorker:
    """A worker invoking, over HTTP, the functions apps registered with ``POST /fn/register``."""
    options = options or WorkerOptions.from_env()
    return await _build(
        keys.HTTP_QUEUE_ID,
        None,
        # the executor adds a margin to the timeout; the URL policy knows which Redis to keep apps off
        HttpInvoker(
            signing_key=signing_key, timeout_s=options.step_timeout_s, url_policy=AppUrlPolicy.from_env(redis_url)
        ),
        redis_url,
        options,
        limits=limits,
        configs=None,
        crons=None,
        handle_signals=handle_signals,
        health=health,
    )


async def _build(
    queue_id: str,
    source: FunctionSource | None,
    invoker: Invoker,
    redis_url: str,
    options: WorkerOptions | None,
    *,
    limits: Limits | None,
    configs: list[dict[str, Any]] | None,
    crons: list[tuple[str, str, str]] | None,
    handle_signals: bool,
    health: Health | None,
    app_client: Client | None = None,
) -> StepqWorker:
    """``configs``: the functions the worker registers as its app's (None: it serves those apps
    registered over HTTP); ``crons``: the cron triggers of imported functions, None reads those of
    HTTP-served ones. Waits for Redis to answer: what it is (a cluster, or one Redis) sets the
    shard count the worker serves. ``app_client``: the app whose ``send`` (in its steps, or anywhere in
    this process) goes through the worker's own Redis client when it names the worker's Redis."""
    options = options or WorkerOptions.from_env()
    pool = await until_redis_answers(lambda: open_redis(redis_url, hot_path=True))
    store = RunStore(pool, limits or Limits.from_env())
    registry = Registry(pool, store.scripts)
    executor = Executor(
        source or RegisteredFunctions(registry),
        store,
        invoker,
        step_timeout_s=options.step_timeout_s + STEP_TIMEOUT_MARGIN_S,
        tracing=tracing.setup(pool, service_name=queue_id if queue_id != keys.HTTP_QUEUE_ID else "stepq-worker"),
    )
    transport = app_client.transport if app_client is not None else None
    if isinstance(transport, RedisTransport) and transport.url == redis_url:
        transport.share(executor.ingest)

    keeper = None
    if configs is not None:
        # The app's runs live within this worker's limits, whichever process writes to them.
        configs = [{**config, "limits": store.limits.to_config()} for config in configs]
        keeper = RegistrationKeeper(pool, registry, queue_id, configs, refresh_s=options.registration_refresh_s)

    async def on_startup(ctx: dict[str, Any]) -> None:
        serves = "functions registered over HTTP"
        if keeper is not None:
            serves = await until_redis_answers(keeper.register_at_start, "registration")
        # waits on lifecycle events written before stepq:{registry}:waited existed (an upgrade)
        await until_redis_answers(lambda: waits.learn_waited(pool, lifecycle.SENT_IF_WANTED), "waits")
        log.info("worker.started", queue=queue_id, serves=serves, redis=redact(redis_url), pid=os.getpid())

    worker = StepqWorker(
        queue_id=queue_id,
        pool=pool,
        store=store,
        functions={ADVANCE: executor.advance},
        options=options,
        # a last resort, after the executor's own limit (which makes a timeout a retriable failure)
        job_timeout_s=options.step_timeout_s + 6 * STEP_TIMEOUT_MARGIN_S,
        on_startup=on_startup,
        cron=CronScheduler(store, crons or [], catch_up=dt.timedelta(seconds=options.cron_catch_up_s)),
        cron_source=(lambda: http_crons(registry)) if crons is None else None,
        registration=keeper,
        handle_signals=handle_signals,
        run_cache=executor.cache,
        outbox_sweeper=outbox.Sweeper(executor.ingest),
        health=health,
    )
    return worker


async def http_crons(registry: Registry) -> list[tuple[str, ...]]:
    """``(slug, app_id, cron, queue)`` for the cron triggers of functions served over HTTP."""
    out: list[tuple[str, ...]] = []
    for record in await registry.functions():
        if record.config.get("queue") != keys.HTTP_QUEUE_ID:
            continue
        for trigger in record.config.get("triggers", []):
            if trigger.get("cron"):
                out.append((record.slug, record.app_id, trigger["cron"], keys.HTTP_QUEUE_ID))
    return out
