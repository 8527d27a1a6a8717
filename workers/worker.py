"""The arq worker that runs stepq jobs for one app, with leases, draining and reconnects.

arq alone locks a running job for ``job_timeout + 10 s`` and never renews the lock, so a killed
worker's step waits minutes before another worker may take it; a Redis error ends its process;
SIGTERM cancels running steps at once. ``StepqWorker`` changes those behaviours:

- a short lease (``lease_s``, 10 s) renewed by a heartbeat while the job runs;
- SIGTERM/SIGINT drain (stop taking jobs, let running steps finish within ``drain_grace_s``, then
  hand back the rest so another worker retries them at once); a second SIGINT forces;
- no Redis error ends the process: a lost connection, and replies such as OOM, READONLY, WRONGTYPE,
  BUSY or a script error, are logged once per kind and retried with a bounded backoff in every loop
  (poll, claim, leases, timers, cron, registration, drain) (``stepq.workers.faults``);
- poison queue entries (a member that is not UTF-8, a score that is not a finite number, a job
  whose keys hold the wrong type, a queue key that is not a sorted set) are moved to the dead
  letters (``stepq.runtime.deadletter``) instead of crashing the worker at every poll;
- a watchdog notices within seconds that Redis stopped answering, even when the link went dark
  without a reset: the worker stops claiming work, drops its stuck connections, and resumes as soon
  as Redis answers (``stepq.workers.watchdog``);
- the app's registration is restored after Redis comes back empty and kept fresh
  (``stepq.workers.registration``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgpack
import structlog
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import ResponseError

from stepq.client import Client
from stepq.runtime import deadletter, keys, timers
from stepq.runtime.app_urls import AppUrlPolicy
from stepq.runtime.connection import make_pool
from stepq.runtime.cron import CronScheduler, cron_functions
from stepq.runtime.jobs import ADVANCE
from stepq.runtime.limits import Limits
from stepq.runtime.redis_errors import error_kind
from stepq.runtime.registry import Registry
from stepq.runtime.store import RunStore

from .executor import Executor
from .faults import REDIS_DOWN, REDIS_TROUBLE, Faults, until_redis_answers
from .http_invoker import HttpInvoker
from .invoker import InProcessInvoker, Invoker
from .registration import DEFAULT_REFRESH_S, RegistrationKeeper
from .remote import FunctionSource, LocalFunctions, RegisteredFunctions
from .watchdog import RedisWatchdog, ping

log = structlog.get_logger("stepq.worker")

__all__ = ["REDIS_DOWN", "StepqWorker", "WorkerOptions", "build_http_worker", "build_worker", "until_redis_answers"]

#: How often a worker looks for due cron ticks (checks between ticks cost no Redis call).
CRON_CHECK_S = 0.1
#: The executor's limit on an invocation is the step timeout plus this (the HTTP client's comes first).
STEP_TIMEOUT_MARGIN_S = 5.0
#: How often a worker serving HTTP functions re-reads which of them have cron triggers.
CRON_REFRESH_S = 10.0
#: While Redis is unreachable, the poll loop waits this long at a time for the watchdog's all-clear.
UNREACHABLE_WAIT_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker process runs; each has an environment variable for containers."""

    #: Jobs (step invocations) run at once by this process (STEPQ_CONCURRENCY).
    concurrency: int = 100
    #: arq polls the queue this often; arq's 0.5 s default would put half a second between steps.
    poll_delay_s: float = 0.005
    #: How long one invocation (one step) may run (STEPQ_STEP_TIMEOUT).
    step_timeout_s: float = 2 * 3600
    #: A running job's lock; renewed every third of it while the job runs (STEPQ_LEASE).
    lease_s: float = 10.0
    #: On SIGTERM, how long running steps may take to finish before they are handed back (STEPQ_DRAIN_GRACE).
    drain_grace_s: float = 30.0
    #: How often a worker checks for sleeping runs whose wake-up job vanished (STEPQ_TIMER_SWEEP).
    timer_sweep_s: float = 30.0
    #: A wake-up this late with no job is re-enqueued (STEPQ_TIMER_OVERDUE).
    timer_overdue_s: float = 60.0
    #: After an outage, the newest missed cron tick still fires if at most this old (STEPQ_CRON_CATCH_UP).
    cron_catch_up_s: float = 600.0
    #: How often the watchdog probes Redis on its own connection (STEPQ_REDIS_CHECK).
    redis_check_s: float = 1.0
    #: A probe unanswered this long (twice in a row) means Redis is unreachable (STEPQ_REDIS_CHECK_TIMEOUT).
    redis_check_timeout_s: float = 1.5
    #: How often a worker re-registers its app's functions while it runs (STEPQ_REGISTRATION_REFRESH).
    registration_refresh_s: float = DEFAULT_REFRESH_S

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkerOptions:
        """Defaults, then environment variables, then explicit ``overrides`` (None means unset)."""
        values: dict[str, Any] = {}
        for field, (variable, kind) in _ENV.items():
            raw = os.environ.get(variable)
            if raw:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise ValueError(f"{variable} must be a {kind.__name__}, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        positive = (
            "poll_delay_s",
            "step_timeout_s",
            "lease_s",
            "timer_sweep_s",
            "redis_check_s",
            "redis_check_timeout_s",
            "registration_refresh_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.drain_grace_s < 0:
            raise ValueError(f"drain grace must not be negative, got {self.drain_grace_s}")


_ENV: dict[str, tuple[str, type[int] | type[float]]] = {
    "concurrency": ("STEPQ_CONCURRENCY", int),
    "poll_delay_s": ("STEPQ_POLL_DELAY", float),
    "step_timeout_s": ("STEPQ_STEP_TIMEOUT", float),
    "lease_s": ("STEPQ_LEASE", float),
    "drain_grace_s": ("STEPQ_DRAIN_GRACE", float),
    "timer_sweep_s": ("STEPQ_TIMER_SWEEP", float),
    "timer_overdue_s": ("STEPQ_TIMER_OVERDUE", float),
    "cron_catch_up_s": ("STEPQ_CRON_CATCH_UP", float),
    "redis_check_s": ("STEPQ_REDIS_CHECK", float),
    "redis_check_timeout_s": ("STEPQ_REDIS_CHECK_TIMEOUT", float),
    "registration_refresh_s": ("STEPQ_REGISTRATION_REFRESH", float),
}


class _Functions(dict[str, Any]):
    """arq's function table: a job naming a function no stepq worker has is logged as an error."""

    def __missing__(self, name: str) -> Any:
        log.error("job.unknown_function", function=name, detail=f"function {name!r} not found; job dropped")
        raise KeyError(name)


class StepqWorker(Worker):
    """arq's Worker with leases, draining, fault tolerance and a watchdog (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        options: WorkerOptions,
        store: RunStore,
        cron: CronScheduler | None = None,
        cron_source: Callable[[], Awaitable[list[tuple[str, ...]]]] | None = None,
        registration: RegistrationKeeper | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cron = cron
        #: Re-reads the cron functions now and then (functions served over HTTP).
        self.cron_source = cron_source
        self.functions = _Functions(self.functions)
        self.options = options
        self.store = store
        #: Keeps the app's registration in Redis (None for workers of functions served over HTTP).
        self.registration = registration
        self.watchdog = RedisWatchdog(
            self.pool.connection_pool,
            interval_s=options.redis_check_s,
            timeout_s=options.redis_check_timeout_s,
            probe=registration.probe if registration is not None else ping,
        )
        self.watchdog.on_back.append(self._reconnected)
        # arq sizes the lock from the longest job timeout; ours is short and kept alive by heartbeats.
        self.in_progress_timeout_s = options.lease_s
        #: The value of the in-progress locks this worker holds: a job is this worker's to renew and
        #: to end only while its lock carries this token.
        self.lease_token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._draining = False
        self._background: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._renew_now = asyncio.Event()
        #: Jobs whose lease this worker lost while running them (logged once each).
        self._lost: set[str] = set()
        self._poll_faults = Faults("poll")
        self._job_faults = Faults("job-end")
        self._dead_letter_faults = Faults("dead-letter")

    async def main(self) -> None:
        """arq's main loop, with these changes: it waits for Redis instead of exiting, survives any
        Redis error, claims nothing while the watchdog finds Redis unreachable, and polls as soon as
        this worker enqueues a job that is due now (``wake``), so a step's next job starts without
        waiting for the next poll tick."""
        self._background = [asyncio.create_task(self.watchdog.run(), name="stepq-watchdog")]
        await until_redis_answers(self.pool.ping)
        self._background += [
            asyncio.create_task(self._renew_leases(), name="stepq-leases"),
            asyncio.create_task(self._sweep_timers(), name="stepq-timers"),
        ]
        if self.cron is not None and (self.cron.functions or self.cron_source is not None):
            self._background.append(asyncio.create_task(self._fire_cron(), name="stepq-cron"))
        try:
            self.ctx["redis"] = self.pool
            if self.on_startup:
                await self.on_startup(self.ctx)
            if self.registration is not None:
                self._background.append(asyncio.create_task(self.registration.run(), name="stepq-registration"))
            loop = asyncio.get_running_loop()
            while True:
                began = loop.time()
                await self._poll_iteration()
                if self.burst and await self._burst_done():
                    return
                wait = self.poll_delay_s - (loop.time() - began)
                if wait > 0 and not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
        finally:
            for task in [*self._background, *self._chores]:
                task.cancel()
            await asyncio.gather(*self._background, *self._chores, return_exceptions=True)

    def wake(self) -> None:
        """Poll now: a job due now was just enqueued."""
        self._wake.set()

    def _reconnected(self) -> None:
        """Redis answers again after an outage: poll, renew leases and check the registration now."""
        self.wake()
        self._renew_now.set()
        if self.registration is not None:
            self.registration.refresh_soon()

    async def _nap(self, seconds: float) -> None:
        """Back off for ``seconds``, or less if Redis comes back (or a job is enqueued) meanwhile."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            return True
        return False

    async def _poll_iteration(self) -> None:
        """arq's poll, rewritten so that nothing it meets ends the process: a job task's error is
        logged (not re-raised), a Redis error is logged once per kind and backed off, a poison entry
        is moved aside."""
        self._reap_finished_jobs()
        if not self.watchdog.reachable:
            # Commands would hang until Redis is back: claim nothing, wait for the watchdog.
            await self.watchdog.wait_until_reachable(UNREACHABLE_WAIT_S)
            return
        try:
            await self._read_queue()
            await self.record_health()
        except REDIS_TROUBLE as exc:
            await self._poll_failed(exc)
        else:
            if self._poll_faults.failing:
                self._poll_faults.succeeded()

    async def _read_queue(self) -> None:
        count = self.queue_read_limit
        if self.burst and self.max_burst_jobs >= 0:
            count = min(count, self.max_burst_jobs - self._jobs_started())
            if count < 1:
                return
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            job_ids = await self.pool.zrangebyscore(
                self.queue_name, min=float("-inf"), max=timestamp_ms(), start=self._queue_read_offset, num=count
            )
            await self.start_jobs(job_ids)

    async def _poll_failed(self, exc: BaseException) -> None:
        if error_kind(exc) == "WRONGTYPE" and await self._move_queue_aside():
            return  # the queue is fresh: poll again at once
        await self._nap(self._poll_faults.failed(exc))

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim the due jobs among ``job_ids`` in one Lua call, then run them as arq would.

        Same semantics as arq's ``start_jobs`` (a job runs only where its in-progress lock was set,
        and only while it is due), at one round trip per poll instead of four per id. Members that
        are not UTF-8, and scores that are not finite numbers, go to the dead letters.
        """
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        job_ids = await self._without_undecodable(job_ids)
        if not job_ids:
            return
        claimed, poison = await self.store.scripts.call(
            "claim_jobs",
            [self.queue_name, *(keys.in_progress(job_id.decode()) for job_id in job_ids)],
            [timestamp_ms(), int(self.in_progress_timeout_s * 1000), free, self.lease_token, *job_ids],
        )
        for member in poison:
            await self._dead_letter(member, "score is not a finite number")
        for i in range(0, len(claimed), 2):
            job_id = claimed[i].decode()
            running = self.tasks.get(job_id)
            if running is not None and not running.done():
                # This worker still runs it (its lease lapsed while Redis was away): the lock is ours again.
                continue
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(claimed[i + 1]))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _without_undecodable(self, job_ids: list[bytes]) -> list[bytes]:
        try:
            # One decode for the whole batch; the separator keeps bytes of neighbours from pairing up.
            b"\n".join(job_ids).decode()
        except UnicodeDecodeError:
            sound = []
            for member in job_ids:
                try:
                    member.decode()
                except UnicodeDecodeError:
                    await self._dead_letter(member, "queue member is not UTF-8")
                else:
                    sound.append(member)
            return sound
        return job_ids

    async def _dead_letter(self, member: bytes, reason: str) -> None:
        """Move a poison member aside; if Redis refuses, leave it (it is skipped) and try next poll."""
        try:
            letter = await deadletter.move_member(self.store.scripts, self.queue_name, member, reason)
        except REDIS_TROUBLE as exc:
            self._dead_letter_faults.failed(exc, member=repr(member)[:200])
            return
        self._dead_letter_faults.succeeded()
        if letter is not None:
            log.error(
                "queue.dead_letter", queue=self.queue_name, member=letter.member_text, score=letter.score, reason=reason
            )

    async def _move_queue_aside(self) -> bool:
        try:
            letter = await deadletter.move_queue(self.store.scripts, self.queue_name, "queue key is not a sorted set")
        except REDIS_TROUBLE as exc:
            self._dead_letter_faults.failed(exc)
            return False
        if letter is None:
            return False  # the queue is sound: the WRONGTYPE came from elsewhere
        log.error("queue.moved_aside", queue=self.queue_name, moved_to=letter.moved_to, type=letter.key_type)
        return True

    async def _check_job_keys(self, job_id: str) -> None:
        """After a job ended with WRONGTYPE or a bad integer: if its own arq keys are unusable, every
        attempt would end so; move it to the dead letters."""
        job_key, retry_key = keys.job(job_id), keys.retry(job_id)
        try:
            job_type = (await self.pool.type(job_key)).decode()
            retry_type = (await self.pool.type(retry_key)).decode()
            reason = None
            if job_type not in ("string", "none"):
                reason = f"its job key {job_key} holds a {job_type}, not a string"
            elif retry_type not in ("string", "none"):
                reason = f"its retry key {retry_key} holds a {retry_type}, not a string"
            elif retry_type == "string" and not (await self.pool.get(retry_key) or b"").strip().lstrip(b"-").isdigit():
                reason = f"its retry key {retry_key} holds no integer"
            if reason is not None:
                await self._dead_letter(job_id.encode(), reason)
        except REDIS_TROUBLE as exc:
            self._dead_letter_faults.failed(exc, job_id=job_id)

    def _spawn(self, chore: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(chore)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _reap_finished_jobs(self) -> None:
        for job_id, task in list(self.tasks.items()):
            if not task.done():
                continue
            del self.tasks[job_id]
            exc = None if task.cancelled() else task.exception()
            if exc is None:
                if self._job_faults.failing:
                    self._job_faults.succeeded()
            elif isinstance(exc, REDIS_TROUBLE):
                # arq could not record the job's end: it stays queued and runs again after the lease.
                self._job_faults.failed(exc, job_id=job_id)
                if isinstance(exc, ResponseError) and ("WRONGTYPE" in str(exc) or "not an integer" in str(exc)):
                    self._spawn(self._check_job_keys(job_id))
            else:
                log.error("job.ended_with_error", job_id=job_id, error=repr(exc))

    async def _renew_leases(self) -> None:
        """Extend the lock of every job this process runs, every third of the lease."""
        lease_ms = int(self.options.lease_s * 1000)
        faults = Faults("leases")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), self.options.lease_s / 3)
            self._renew_now.clear()
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not running or not self.watchdog.reachable:
                continue
            try:
                renewed = await self.store.scripts.call(
                    "renew_leases", [keys.in_progress(job_id) for job_id in running], [self.lease_token, lease_ms]
                )
            except REDIS_TROUBLE as exc:
                faults.failed(exc, jobs=len(running))
                continue
            faults.succeeded()
            for job_id, ok in zip(running, renewed, strict=True):
                task = self.tasks.get(job_id)
                if not ok and task is not None and not task.done() and job_id not in self._lost:
                    # Another worker may run this job now; our commit will be fenced off, and the
                    # job is that worker's to end.
                    self._lost.add(job_id)
                    log.warning("lease.lost", job_id=job_id)

    async def _sweep_timers(self) -> None:
        faults = Faults("timers")
        while True:
            await asyncio.sleep(self.options.timer_sweep_s)
            if not self.watchdog.reachable:
                continue
            try:
                await timers.revive_overdue(
                    self.pool, self.store.scripts, overdue_ms=int(self.options.timer_overdue_s * 1000)
                )
            except REDIS_TROUBLE as exc:
                faults.failed(exc)
            except Exception:
                log.exception("timers.sweep_crashed")
            else:
                faults.succeeded()

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
                if await self.cron.fire_due():
                    self.wake()
            except REDIS_TROUBLE as exc:
                faults.failed(exc)
            except Exception:
                log.exception("cron.check_crashed")
            else:
                if faults.failing or faults.delay_s:
                    faults.succeeded()

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's end of a job, done only while the job is this worker's (runtime/lua/finish_job.lua).
        stepq keeps no results and runs no arq cron jobs, so those arguments have nothing to do."""
        await self._end_job(job_id, "finish" if finish else "again", incr_score or 0)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        await self._end_job(job_id, "finish", 0)

    async def _end_job(self, job_id: str, how: str, delay_ms: int) -> None:
        self._lost.discard(job_id)
        ended = await self.store.scripts.call(
            "finish_job",
            [keys.in_progress(job_id), keys.retry(job_id), keys.job(job_id), self.queue_name],
            [self.lease_token, how, delay_ms],
        )
        if ended == b"taken":
            log.info("job.taken_over", job_id=job_id, detail="this worker's lease lapsed: the job is left queued")

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """First SIGTERM/SIGINT drains; a second SIGINT hands back running steps at once."""
        if self._draining:
            if signum == signal.SIGINT:
                log.warning("worker.forced", running=len(self.tasks))
                self.handle_sig(signum)
            return
        self._draining = True
        log.info("worker.draining", running=len(self.tasks), grace_s=self.options.drain_grace_s)
        super().handle_sig_wait_for_completion(signum)

    async def close(self) -> None:
        """arq's close, except that a job that ended with an error or a Redis that fails the last
        clean-up does not turn a clean shutdown into a traceback."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await asyncio.wait_for(self.pool.delete(self.health_check_key), self.options.redis_check_timeout_s)
        except (*REDIS_TROUBLE, TimeoutError) as exc:
            log.warning("worker.cleanup_failed", error=str(exc) or type(exc).__name__)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.watchdog.aclose()
        await self.pool.close(close_connection_pool=True)
        self._pool = None


def _deserialize(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False)


def build_worker(
    client: Client,
    redis_url: str,
    options: WorkerOptions | None = None,
    *,
    limits: Limits | None = None,
    invoker: Invoker | None = None,
    handle_signals: bool = True,
) -> StepqWorker:
    """A worker running ``client``'s functions in this process, from the app's queue."""
    functions = {fn.slug: fn for fn in client.functions.values()}
    return _build(
        client.app_id,
        LocalFunctions(functions),
        invoker or InProcessInvoker(),
        redis_url,
        options,
        limits=limits,
        configs=[fn.config() for fn in functions.values()],
        crons=cron_functions(functions.values()),  # a bad cron expression fails here, naming the function
        handle_signals=handle_signals,
    )


def build_http_worker(
    redis_url: str,
    options: WorkerOptions | None = None,
    *,
    signing_key: str | None = None,
    limits: Limits | None = None,
    handle_signals: bool = True,
) -> StepqWorker:
    """A worker invoking, over HTTP, the functions apps registered with ``POST /fn/register``."""
    options = options or WorkerOptions.from_env()
    return _build(
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
    )


def _build(
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
) -> StepqWorker:
    """``configs``: the functions the worker registers as its app's (None: it serves those apps
    registered over HTTP); ``crons``: the cron triggers of imported functions, None reads those of
    HTTP-served ones."""
    options = options or WorkerOptions.from_env()
    pool = ArqRedis(
        connection_pool=make_pool(redis_url, hot_path=True),
        job_serializer=msgpack.packb,
        job_deserializer=_deserialize,
        default_queue_name=keys.queue(queue_id),
    )
    store = RunStore(pool, limits or Limits.from_env())
    registry = Registry(pool, store.scripts)
    executor = Executor(
        source or RegisteredFunctions(registry),
        store,
        invoker,
        step_timeout_s=options.step_timeout_s + STEP_TIMEOUT_MARGIN_S,
    )

    keeper = None
    if configs is not None:
        # The app's runs live within this worker's limits, whichever process writes to them.
        configs = [{**config, "limits": store.limits.to_config()} for config in configs]
        keeper = RegistrationKeeper(pool, registry, queue_id, configs, refresh_s=options.registration_refresh_s)

    async def on_startup(ctx: dict[str, Any]) -> None:
        serves = "functions registered over HTTP"
        if keeper is not None:
            serves = await until_redis_answers(keeper.register_at_start, "registration")
        log.info("worker.started", queue=queue_id, serves=serves, redis=_redact(redis_url), pid=os.getpid())

    worker = StepqWorker(
        # arq's timeout is a last resort, after the executor's own (a timed-out arq job is never retried)
        functions=[
            func(
                executor.advance,
                name=ADVANCE,
                timeout=options.step_timeout_s + 6 * STEP_TIMEOUT_MARGIN_S,
                max_tries=10**9,
            )
        ],
        queue_name=keys.queue(queue_id),
        redis_pool=pool,
        on_startup=on_startup,
        max_jobs=options.concurrency,
        # Every worker reads from the head of the queue; a read limit below the fleet's slots would
        # cap the whole fleet (arq-internals B.7), so read generously.
        queue_read_limit=max(1000, options.concurrency * 10),
        poll_delay=options.poll_delay_s,
        keep_result=0,
        job_serializer=msgpack.packb,
        job_deserializer=_deserialize,
        handle_signals=handle_signals,
        # arq cancels running jobs at once on SIGTERM unless given a grace period to wait for them.
        job_completion_wait=max(options.drain_grace_s, 0.001),
        health_check_interval=30,
        log_results=False,
        options=options,
        store=store,
        cron=CronScheduler(store, crons or [], catch_up=dt.timedelta(seconds=options.cron_catch_up_s)),
        cron_source=(lambda: http_crons(registry)) if crons is None else None,
        registration=keeper,
    )
    executor.on_next_job = worker.wake
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


def _redact(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
