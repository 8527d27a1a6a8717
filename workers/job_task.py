"""Run one claimed job as arq would, and end it on the queue only while it is still this worker's.

What arq's ``Worker.run_job`` does for a job, less what stepq has no use for (results, aborts, cron
jobs): read the job in arq's format (``arq.jobs.deserialize_job_raw``), call its function with arq's
job context, honour arq's ``Retry`` (back on the queue after its delay), and end the job. The claim
already read the payload, counted the try and loaded the job's run (``ClaimedJob.preload``), so a
job costs no round trip before its function runs.
When the call that commits a step also hands this worker the run's next job (``JobEnded``), that
job runs next in the same slot: a warm hop costs one round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from arq.jobs import SerializationError, deserialize_job_raw
from arq.worker import Retry

from stepq.runtime.codec import unpack
from stepq.runtime.job_queue import ClaimedJob, JobEnded, JobQueue

from .faults import REDIS_TROUBLE, Faults

log = structlog.get_logger("stepq.worker")

#: Consecutive hand-offs in one slot (see ``JobRunner.max_handoffs``).
MAX_HANDOFFS = 50
#: A job's function: arq's signature, ``(ctx, *args, **kwargs)``.
JobFunction = Callable[..., Awaitable[Any]]


class JobRunner:
    """Runs claimed jobs of one queue for one worker; ``queue_of(job_id)`` is the shard's part of the
    queue that holds the job (a run's jobs, and so a job's hand-offs, stay in its shard)."""

    def __init__(
        self,
        queue_of: Callable[[str], JobQueue],
        functions: Mapping[str, JobFunction],
        *,
        timeout_s: float,
        ctx: dict[str, Any],
        max_handoffs: int = MAX_HANDOFFS,
    ) -> None:
        self.queue_of = queue_of
        self.functions = functions
        #: A last resort after the function's own limits: a job past it is ended, and logged.
        self.timeout_s = timeout_s
        self.ctx = ctx
        #: A run's job may hand its slot the run's next job this many times in a row; then the next
        #: job goes to the queue like any other, so a long run does not starve queued work.
        self.max_handoffs = max_handoffs
        #: The jobs whose leases this worker holds now (their locks carry its token).
        self.held: set[str] = set()
        #: Jobs whose lease this worker lost while running them (the lease keeper says so).
        self.lost: set[str] = set()
        #: Set when the worker drains: no more hand-offs.
        self.stopping = False
        self._end_faults = Faults("job-end")

    async def run(self, job: ClaimedJob) -> None:
        """Run ``job``, and the jobs its function is handed (``JobEnded``), to their end; never
        raises (a cancellation hands the current job back to the queue)."""
        handoffs = 0
        preload = job.preload  # the claim's load of the job's run, if it made one
        while True:
            self.held.add(job.job_id)
            ended, again_in_ms = await self._call(job, preload, may_hand_off=handoffs < self.max_handoffs)
            if ended is not None:
                # the Lua call that committed the step ended this job: go on with the next, if handed one
                self.held.discard(job.job_id)
                self.lost.discard(job.job_id)
                if ended.next_job is None:
                    return
                job, preload = ended.next_job, ended.preload
                handoffs += 1
                continue
            await asyncio.shield(self._end(job.job_id, again_in_ms))
            self.held.discard(job.job_id)
            return

    async def _call(
        self, job: ClaimedJob, preload: object, *, may_hand_off: bool
    ) -> tuple[JobEnded | None, int | None]:
        """Call the job's function: (the job ended by its write, if it was; else when to run this
        job again, None for never)."""
        try:
            name, args, kwargs, _, enqueued_ms = deserialize_job_raw(job.payload, deserializer=unpack)
        except SerializationError as exc:
            # as arq: a job nothing can read is dropped, and said so
            log.error("job.malformed", job_id=job.job_id, error=f"its payload is not an arq job: {exc}")
            return None, None
        function = self.functions.get(name)
        if function is None:
            log.error("job.unknown_function", job_id=job.job_id, detail=f"function {name!r} not found; job dropped")
            return None, None
        ctx = {
            **self.ctx,
            "job_id": job.job_id,
            "job_try": job.job_try,
            "enqueue_time": dt.datetime.fromtimestamp(enqueued_ms / 1000, dt.UTC),
            "score": job.score,
            # stepq's: the job may be handed the run's next job; the state that job would load
            "may_hand_off": may_hand_off and not self.stopping,
            "preload": preload,
        }
        try:
            result = await asyncio.wait_for(function(ctx, *args, **kwargs), self.timeout_s)
        except Retry as retry:
            return None, retry.defer_score or 0
        except asyncio.CancelledError:
            # A drain past its grace, or a forced stop: back on the queue, due now, for another worker.
            return None, 0
        except TimeoutError:
            log.error("job.timeout", job_id=job.job_id, timeout_s=self.timeout_s)
        except Exception as exc:
            log.error("job.ended_with_error", job_id=job.job_id, error=repr(exc))
        else:
            if isinstance(result, JobEnded):
                return result, None
        return None, None

    async def _end(self, job_id: str, again_in_ms: int | None) -> None:
        self.lost.discard(job_id)
        try:
            ours = await self.queue_of(job_id).end(job_id, again_in_ms=again_in_ms)
        except REDIS_TROUBLE as exc:
            # The job stays queued under its lease: when that lapses it runs again, and finds its
            # work done or does it.
            self._end_faults.failed(exc, job_id=job_id)
            return
        if self._end_faults.failing:
            self._end_faults.succeeded()
        if not ours:
            log.info("job.taken_over", job_id=job_id, detail="this worker's lease lapsed: the job is left queued")
