"""The state a warm hop hands the run's next job (``Executor._handed_over``): the run as its load
would read it, one step further. Built field by field on every step, so every field of
``LoadedRun`` must be carried over or set on purpose."""

from __future__ import annotations

import dataclasses

from redis.asyncio import Redis

import stepq
from stepq.opcodes import memo_data
from stepq.runtime.jobs import JobSpec
from stepq.runtime.plan import Commit
from stepq.runtime.store import FENCE, Handoff, LoadedRun, RunStore
from stepq.workers.executor import Executor
from stepq.workers.invoker import InProcessInvoker
from stepq.workers.remote import LocalFunctions

RUN = "01HANDOFF00000000000000000"


async def test_the_next_jobs_state_is_the_run_one_step_further_with_every_field_carried(redis: Redis) -> None:
    run = LoadedRun(
        run_id=RUN,
        fn_slug="app-fn",
        queue_id="app-queue",
        fence="3",
        position=2,
        events=[stepq.Event(name="a/b", id="e1")],
        memo={"k0": memo_data(0), "k1": memo_data(1)},
        stack=("k0", "k1"),
        fence_field="fence:planned-step",
        created_ms=1_234,
        first_start=True,
        force_plan=True,
    )
    # a value unlike its default in every field: a field a new version forgot would show
    assert all(getattr(run, f.name) != f.default for f in dataclasses.fields(LoadedRun))
    commit = Commit("k2", "s", memo_data(2), 1, 5, JobSpec(RUN, 3))
    handoff = Handoff(f"{RUN}:p3:a0", b"payload", 1, "4", False)
    executor = Executor(LocalFunctions({}), RunStore(redis), InProcessInvoker())

    ended = executor._handed_over(run, commit, handoff)

    assert ended.next_job is not None and ended.next_job.payload == b"payload"
    assert ended.preload == dataclasses.replace(
        run,
        fence="4",
        position=3,
        memo={**run.memo, "k2": memo_data(2)},
        stack=("k0", "k1", "k2"),
        fence_field=FENCE,
        first_start=False,
        force_plan=False,
    )
    assert run.memo == {"k0": memo_data(0), "k1": memo_data(1)}  # the loaded run's own memo untouched
