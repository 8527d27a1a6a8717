"""Run one claimed job as arq would, and end it on the queue only while it is still this worker's.

What arq's ``Worker.run_job`` does for a job, less what stepq has no use for (results, aborts, cron
jobs): read the job in arq's format (``arq.jobs.deserialize_job_raw``), call its function with arq's
job context, honour arq's ``Retry`` (back on the queue after its delay), and end the job. The claim
already read the payload and counted the try, so a job costs no round trip before its function runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgpack
import structlog
from arq.jobs import SerializationError, deserialize_job_raw
from arq.worker import Retry

from stepq.runtime.job_queue import ClaimedJob, JobQueue

from .faults import REDIS_TROUBLE, Faults

log = structlog.get_logger("stepq.worker")

#: A job's function: arq's signature, ``(ctx, *args, **kwargs)``.
JobFunction = Callable[..., Awaitable[Any]]
#: Called with a job that cannot run at all (its payload is not a job, or names no known function).
OnPoison = Callable[[ClaimedJob, str], Awaitable[None]]


def _deserialize(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False)


class JobRunner:
    """Runs claimed jobs of one queue for one worker."""

    def __init__(
        self,
        queue: JobQueue,
        functions: Mapping[str, JobFunction],
        *,
        timeout_s: float,
        ctx: dict[str, Any],
        on_poison: OnPoison,
    ) -> None:
        self.queue = queue
        self.functions = functions
        #: A last resort after the function's own limits: a job past it is ended, and logged.
        self.timeout_s = timeout_s
        self.ctx = ctx
        self.on_poison = on_poison
        #: Jobs whose lease this worker lost while running them (the lease keeper says so).
        self.lost: set[str] = set()
        self._end_faults = Faults("job-end")

    async def run(self, job: ClaimedJob) -> None:
        """Run ``job`` to its end; never raises (a cancellation hands the job back to the queue)."""
        try:
            name, args, kwargs, _, enqueued_ms = deserialize_job_raw(job.payload, deserializer=_deserialize)
        except SerializationError as exc:
            await self.on_poison(job, f"its payload is not an arq job: {exc}")
            return
        function = self.functions.get(name)
        if function is None:
            await self.on_poison(job, f"no function {name!r} in this worker")
            return
        ctx = {
            **self.ctx,
            "job_id": job.job_id,
            "job_try": job.job_try,
            "enqueue_time": dt.datetime.fromtimestamp(enqueued_ms / 1000, dt.UTC),
            "score": job.score,
        }
        again_in_ms: int | None = None
        try:
            await asyncio.wait_for(function(ctx, *args, **kwargs), self.timeout_s)
        except Retry as retry:
            again_in_ms = retry.defer_score or 0
        except asyncio.CancelledError:
            # A drain past its grace, or a forced stop: back on the queue, due now, for another worker.
            again_in_ms = 0
        except TimeoutError:
            log.error("job.timeout", job_id=job.job_id, timeout_s=self.timeout_s)
        except Exception as exc:
            log.error("job.ended_with_error", job_id=job.job_id, error=repr(exc))
        await asyncio.shield(self._end(job.job_id, again_in_ms))

    async def _end(self, job_id: str, again_in_ms: int | None) -> None:
        self.lost.discard(job_id)
        try:
            ours = await self.queue.end(job_id, again_in_ms=again_in_ms)
        except REDIS_TROUBLE as exc:
            # The job stays queued under its lease: when that lapses it runs again, and finds its
            # work done or does it.
            self._end_faults.failed(exc, job_id=job_id)
            return
        if self._end_faults.failing:
            self._end_faults.succeeded()
        if not ours:
            log.info("job.taken_over", job_id=job_id, detail="this worker's lease lapsed: the job is left queued")
