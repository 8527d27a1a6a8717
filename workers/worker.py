"""The arq worker that runs stepq jobs for one app, with leases, draining and reconnects.

arq alone locks a running job for ``job_timeout + 10 s`` and never renews the lock, so a killed
worker's step waits minutes before another worker may take it; a Redis blip kills its poll loop;
SIGTERM cancels running steps at once. ``StepqWorker`` changes those three behaviours:

- a short lease (``lease_s``, 10 s) renewed by a heartbeat while the job runs;
- SIGTERM/SIGINT drain (stop taking jobs, let running steps finish within ``drain_grace_s``, then
  hand back the rest so another worker retries them at once); a second SIGINT forces;
- Redis errors in the poll loop are logged and retried with backoff instead of ending the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgpack
import structlog
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime import keys, timers
from runtime.connection import make_pool
from runtime.cron import CronScheduler, cron_functions
from runtime.jobs import ADVANCE
from runtime.limits import Limits
from runtime.registry import Registry
from runtime.store import RunStore
from sdk.client import Client
from workers.executor import Executor
from workers.http_invoker import HttpInvoker
from workers.invoker import InProcessInvoker, Invoker
from workers.remote import FunctionSource, LocalFunctions, RegisteredFunctions

log = structlog.get_logger("stepq.worker")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
#: How often a worker looks for due cron ticks (checks between ticks cost no Redis call).
CRON_CHECK_S = 0.1
#: The executor's limit on an invocation is the step timeout plus this (the HTTP client's comes first).
STEP_TIMEOUT_MARGIN_S = 5.0
#: How often a worker serving HTTP functions re-reads which of them have cron triggers.
CRON_REFRESH_S = 10.0


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
        for name in ("poll_delay_s", "step_timeout_s", "lease_s", "timer_sweep_s"):
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
}


R = TypeVar("R")


async def until_redis_answers(action: Callable[[], Awaitable[R]]) -> R:
    """Run ``action``, retrying with backoff (up to 5 s apart) while Redis does not answer."""
    delay = 0.1
    while True:
        try:
            return await action()
        except REDIS_DOWN as exc:
            log.warning("redis.unavailable", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class _Functions(dict[str, Any]):
    """arq's function table: a job naming a function no stepq worker has is logged as an error."""

    def __missing__(self, name: str) -> Any:
        log.error("job.unknown_function", function=name, detail=f"function {name!r} not found; job dropped")
        raise KeyError(name)


class StepqWorker(Worker):
    """arq's Worker with leases, draining and reconnects (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        options: WorkerOptions,
        store: RunStore,
        cron: CronScheduler | None = None,
        cron_source: Callable[[], Awaitable[list[tuple[str, ...]]]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cron = cron
        #: Re-reads the cron functions now and then (functions served over HTTP).
        self.cron_source = cron_source
        self.functions = _Functions(self.functions)
        self.options = options
        self.store = store
        # arq sizes the lock from the longest job timeout; ours is short and kept alive by heartbeats.
        self.in_progress_timeout_s = options.lease_s
        self._draining = False
        self._backoff = 0.0
        self._background: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    async def main(self) -> None:
        """arq's main loop, with two changes: it waits for Redis instead of exiting, and a poll
        happens as soon as this worker enqueues a job that is due now (``wake``), so a step's
        next job starts without waiting for the next poll tick."""
        await self._wait_for_redis()
        self._background = [
            asyncio.create_task(self._renew_leases(), name="stepq-leases"),
            asyncio.create_task(self._sweep_timers(), name="stepq-timers"),
        ]
        if self.cron is not None and (self.cron.functions or self.cron_source is not None):
            self._background.append(asyncio.create_task(self._fire_cron(), name="stepq-cron"))
        try:
            self.ctx["redis"] = self.pool
            if self.on_startup:
                await self.on_startup(self.ctx)
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
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)

    def wake(self) -> None:
        """Poll now: a job due now was just enqueued."""
        self._wake.set()

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim the due jobs among ``job_ids`` in one Lua call, then run them as arq would.

        Same semantics as arq's ``start_jobs`` (a job runs only where its in-progress lock was set,
        and only while it is due), at one round trip per poll instead of four per id.
        """
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        claimed = await self.store.scripts.call(
            "claim_jobs",
            [self.queue_name],
            [timestamp_ms(), int(self.in_progress_timeout_s * 1000), free, *job_ids],
        )
        for i in range(0, len(claimed), 2):
            await self.sem.acquire()
            self.job_counter += 1
            job_id = claimed[i].decode()
            task = self.loop.create_task(self.run_job(job_id, int(float(claimed[i + 1]))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _wait_for_redis(self) -> None:
        """A worker that starts before Redis (or during a restart) waits for it rather than exiting."""
        await until_redis_answers(self.pool.ping)

    async def _poll_iteration(self) -> None:
        # arq re-raises a finished job task's exception from its poll loop; a job that failed while
        # Redis was down would then look like a fresh outage for every poll after Redis is back.
        self._reap_finished_jobs()
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            if await self._redis_answers():
                log.warning("job.finish_failed", error=str(exc))  # a leftover of an outage: go on
                return
            self._backoff = min(max(self._backoff * 2, 0.1), 5.0)
            log.warning("redis.unavailable", error=str(exc), retry_in_s=self._backoff)
            await asyncio.sleep(self._backoff)
        else:
            if self._backoff:
                log.info("redis.reconnected")
                self._backoff = 0.0

    def _reap_finished_jobs(self) -> None:
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                if not task.cancelled() and task.exception() is not None:
                    # The job stays queued (arq could not record its end): it runs again after the lease.
                    log.warning("job.ended_with_error", job_id=job_id, error=repr(task.exception()))

    async def _redis_answers(self) -> bool:
        try:
            await asyncio.wait_for(self.pool.ping(), 2.0)
        except Exception:
            return False
        return True

    async def _renew_leases(self) -> None:
        """Extend the lock of every job this process runs, every third of the lease."""
        lease_ms = int(self.options.lease_s * 1000)
        while True:
            await asyncio.sleep(self.options.lease_s / 3)
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not running:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in running:
                        pipe.pexpire(keys.ARQ_IN_PROGRESS + job_id, lease_ms)
                    renewed = await pipe.execute()
            except REDIS_DOWN as exc:
                log.warning("lease.renew_failed", jobs=len(running), error=str(exc))
                continue
            for job_id, ok in zip(running, renewed, strict=True):
                task = self.tasks.get(job_id)
                if not ok and task is not None and not task.done():
                    # Another worker may run this job now; our commit will be fenced off.
                    log.warning("lease.lost", job_id=job_id)

    async def _sweep_timers(self) -> None:
        while True:
            await asyncio.sleep(self.options.timer_sweep_s)
            try:
                await timers.revive_overdue(
                    self.pool, self.store.scripts, overdue_ms=int(self.options.timer_overdue_s * 1000)
                )
            except RedisError as exc:
                log.warning("timers.sweep_failed", error=str(exc))

    async def _fire_cron(self) -> None:
        """Start the runs of due cron ticks; every worker does, and each tick's claim admits one run."""
        assert self.cron is not None
        refreshed = 0.0
        while True:
            await asyncio.sleep(CRON_CHECK_S)
            try:
                if self.cron_source is not None and time.monotonic() - refreshed > CRON_REFRESH_S:
                    # functions served over HTTP come and go with their apps' syncs
                    self.cron = CronScheduler(self.store, await self.cron_source(), catch_up=self.cron.catch_up)
                    refreshed = time.monotonic()
                if await self.cron.fire_due():
                    self.wake()
            except RedisError as exc:
                log.warning("cron.check_failed", error=str(exc))
            except Exception:
                log.exception("cron.check_crashed")

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

    async def register(registry: Registry) -> str:
        count = await registry.register_app(client.app_id, [fn.config() for fn in functions.values()])
        return f"{client.app_id} ({count} functions)"

    return _build(
        client.app_id,
        LocalFunctions(functions),
        invoker or InProcessInvoker(),
        redis_url,
        options,
        limits=limits,
        register=register,
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
        HttpInvoker(signing_key=signing_key, timeout_s=options.step_timeout_s),  # the executor adds a margin
        redis_url,
        options,
        limits=limits,
        register=None,
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
    register: Callable[[Registry], Awaitable[str]] | None,
    crons: list[tuple[str, str, str]] | None,
    handle_signals: bool,
) -> StepqWorker:
    """``crons``: the cron triggers of imported functions; None reads those of HTTP-served ones."""
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

    async def on_startup(ctx: dict[str, Any]) -> None:
        serves = "functions registered over HTTP"
        if register is not None:
            serves = await until_redis_answers(lambda: register(registry))
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
