"""An invocation past the executor's step timeout is a retriable failure (``StepTimeout``), and the
user code it interrupted is cancelled: the run is retried, not left to arq's own job timeout."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.jobs import JobSpec
from stepq.runtime.queries import get_run
from stepq.runtime.store import RunStore
from stepq.workers.executor import Executor
from stepq.workers.invoker import InProcessInvoker
from stepq.workers.remote import LocalFunctions
from tests.helpers import REDIS_URL, queued_jobs


async def test_an_invocation_past_the_step_timeout_is_cancelled_and_retried(redis: Redis) -> None:
    client = stepq.Client("t-timeout", redis_url=REDIS_URL)
    cancelled: list[str] = []

    @client.create_function(id="slow", trigger=stepq.TriggerEvent(event="timeout/slow"))
    async def slow(ctx: stepq.Context) -> str:
        async def nap() -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(ctx.run_id)
                raise
            return "late"

        return str(await ctx.step.run("nap", nap))

    store = RunStore(redis)
    executor = Executor(LocalFunctions({slow.slug: slow}), store, InProcessInvoker(), step_timeout_s=0.3)
    run_id = "01TIMEOUT00000000000000000"
    await store.create_run(
        run_id=run_id, fn_slug=slow.slug, app_id="t-timeout", events=[stepq.Event(name="timeout/slow")], dedupe_key=None
    )
    job = JobSpec(run_id, 0)

    started = time.monotonic()
    await executor.advance({"job_id": job.job_id, "job_try": 1}, job.to_payload())

    assert time.monotonic() - started < 5
    assert cancelled == [run_id]
    error = await redis.hget(keys.run(run_id), "fn_error")  # type: ignore[misc]
    assert error is not None and error.decode().startswith("StepTimeout: the invocation of t-timeout-slow took longer")
    assert JobSpec(run_id, 0, attempt=1).job_id in await queued_jobs(redis, "t-timeout", run_id)
    view = await get_run(redis, run_id)
    assert view is not None and view.status == "running"
    await client.aclose()
