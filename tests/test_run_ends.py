"""Every run ends: the regressions of issue 8's items 1-5, 15 and 16, with functions run in-process.

- Parallel steps of many runs at once on one worker: each load of a run must see its own snapshot
  of the run's history (a shared cache once made planned steps run as ordinary steps, which were
  then refused, and runs stayed ``running`` with nothing queued).
- A refused write never parks a run with nothing to wake it.
- A sleep right after a sleep is a sleep (a timer the reconciler can revive), not a fan-out.
- Limits hold on every path: steps per run for parallel groups, the state's size for parallel
  results, waits' events and invoked runs' results, the size of a run's own output.
- A step that ran twice (its worker lost the lease) shows two executions and one attempt.

The same answers from apps served over HTTP are in ``test_served_answers.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

import stepq
from stepq.engine import StepsReported
from stepq.opcodes import Op, Opcode
from stepq.retry import Backoff
from stepq.runtime import keys
from stepq.runtime.decide import decide
from stepq.runtime.jobs import JobKind, JobSpec
from stepq.runtime.plan import Now, Policy
from stepq.runtime.queries import get_run
from stepq.runtime.store import LoadedRun, Outcome, RunStore, now_ms
from stepq.workers.executor import Executor
from stepq.workers.invoker import InProcessInvoker
from stepq.workers.remote import LocalFunctions
from tests.helpers import (
    REDIS_URL,
    StartWorkers,
    invocations,
    queued_jobs,
    run_memo,
    run_stack,
    runs_of,
    sha1,
    start_run,
    start_runs,
    wait_for_run,
    wait_for_runs,
)
from tests.http_fixtures import stepq_cli

SMALL_LIMITS = {"STEPQ_MAX_STATE_BYTES": str(1024 * 1024), "STEPQ_MAX_OUTPUT_BYTES": str(256 * 1024)}


async def assert_nothing_left(redis: Redis, app_id: str, run_id: str) -> None:
    """An ended run has no job queued, no pending step, no wait and no timer."""
    assert await queued_jobs(redis, app_id, run_id) == []
    assert await redis.scard(keys.pending(run_id)) == 0  # type: ignore[misc]
    assert not [f for f in await redis.hkeys(keys.run(run_id)) if f.startswith((b"wait:", b"timer"))]  # type: ignore[misc]


# -- item 1: parallel steps under concurrency ------------------------------------------------------


async def test_thirty_parallel_fan_outs_at_once_on_one_worker_all_complete(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("parallel")
    n_steps = 20
    events = [stepq.Event(name="test/fan.fast", data={"n": n_steps}) for _ in range(30)]
    run_ids = await start_runs(sender, redis, "fan-fast", events)

    await wait_for_runs(redis, run_ids, timeout=90)

    expected_keys = {sha1(f"f{i}") for i in range(n_steps)}
    for run_id in run_ids:
        view = await get_run(redis, run_id)
        assert view is not None and view.status == "completed", (run_id, view and view.status, view and view.error)
        assert view.output == [i * i for i in range(n_steps)]
        stack = await run_stack(redis, run_id)
        assert len(stack) == n_steps and set(stack) == expected_keys, stack
        await assert_nothing_left(redis, "t-parallel", run_id)


# -- item 2: a refused write never strands a run ---------------------------------------------------


async def test_a_commit_refused_as_stale_leaves_the_run_with_a_job(redis: Redis) -> None:
    """A writer the job did not expect moved the run on while its step ran (here: a step that writes
    to the run's history itself, standing in for any such writer). The commit is refused as stale;
    the run must still get a job that re-enters it where it now stands."""
    client = stepq.Client("t-nudge", redis_url=REDIS_URL)
    intruder = sha1("intruder")

    @client.create_function(id="two", trigger=stepq.TriggerEvent(event="nudge/two"))
    async def two(ctx: stepq.Context) -> list[Any]:
        async def first() -> str:
            await redis.rpush(keys.stack(ctx.run_id), intruder)  # type: ignore[misc]
            await redis.hset(keys.memo(ctx.run_id), intruder, b"\xc0")  # type: ignore[misc,arg-type]
            return "a"

        return [await ctx.step.run("first", first), await ctx.step.run("second", lambda: "b")]

    store = RunStore(redis)
    executor = Executor(LocalFunctions({two.slug: two}), store, InProcessInvoker())
    run_id = "01NUDGE0000000000000000000"
    await store.create_run(
        run_id=run_id, fn_slug=two.slug, app_id="t-nudge", events=[stepq.Event(name="nudge/two")], dedupe_key=None
    )
    first_job = JobSpec(run_id, 0)

    await executor.advance({"job_id": first_job.job_id, "job_try": 1}, first_job.to_payload())

    assert await run_stack(redis, run_id) == [intruder]  # the step's own commit was refused
    # The first job is still queued only because no arq worker ran it (arq deletes a job it ran).
    queued = await queued_jobs(redis, "t-nudge", run_id)
    assert queued == [first_job.job_id, JobSpec(run_id, 1).job_id], queued
    view = await get_run(redis, run_id)
    assert view is not None and view.status == "running"


async def _started(store: RunStore, run_id: str, fn_slug: str) -> tuple[JobSpec, LoadedRun]:
    """A run of app ``t-nudge`` created and loaded for its first job."""
    await store.create_run(
        run_id=run_id, fn_slug=fn_slug, app_id="t-nudge", events=[stepq.Event(name="n")], dedupe_key=None
    )
    job = JobSpec(run_id, 0)
    run = await store.load(job)
    assert isinstance(run, LoadedRun)
    return job, run


async def test_a_refused_write_is_nudged_in_the_same_script_and_the_nudged_job_moves_the_run(redis: Redis) -> None:
    """RunStore.apply: a commit refused as stale queues, in the same script, the job that re-enters
    the run where it now stands; a refusal that leaves the run in other hands (fenced) queues none."""
    store = RunStore(redis)
    run_id = "01NUDGE1000000000000000000"
    job, run = await _started(store, run_id, "t-nudge-one")
    # A writer the job did not expect moves the run on while the step "runs".
    await redis.rpush(keys.stack(run_id), "intruder")  # type: ignore[misc]
    await redis.hset(keys.memo(run_id), "intruder", b"\xc0")  # type: ignore[misc,arg-type]
    answer = StepsReported([Opcode(Op.STEP_RUN, "k1", "one", data=1)])
    now = Now(now_ms(), dt.datetime.now(dt.UTC))

    written = await store.apply(decide(job, run, Policy(1, Backoff()), answer, now))

    assert (written.outcome, written.nudged) == (Outcome.STALE, "nudged")
    nudge = JobSpec(run_id, 1)
    assert await redis.hget(keys.run(run_id), "next_job") == nudge.job_id.encode()  # type: ignore[misc]
    assert await queued_jobs(redis, "t-nudge", run_id) == [job.job_id, nudge.job_id]
    payload = msgpack.unpackb(await redis.get(keys.job(nudge.job_id)))
    assert JobSpec.from_payload(payload["a"][0]) == nudge and payload["f"] == "stepq.advance"
    # the nudged job's load finds the run where it stands
    again = await store.load(nudge)
    assert isinstance(again, LoadedRun) and again.position == 1 and again.stack == ("intruder",)

    # The first job's write is now fenced (the nudged job's load holds the run): no nudge.
    written = await store.apply(decide(job, run, Policy(1, Backoff()), answer, now))

    assert (written.outcome, written.nudged) == (Outcome.FENCED, "")
    assert await queued_jobs(redis, "t-nudge", run_id) == [job.job_id, nudge.job_id]


async def test_a_refused_write_does_not_nudge_a_run_that_something_else_moves_on(redis: Redis) -> None:
    """A planned step's result refused as duplicate while the run has other steps pending: their jobs
    move it on, so the nudge queues nothing."""
    store = RunStore(redis)
    run_id = "01NUDGE2000000000000000000"
    first, run = await _started(store, run_id, "t-nudge-two")
    now = Now(now_ms(), dt.datetime.now(dt.UTC))
    fan_out = StepsReported([Opcode(Op.STEP_PLANNED, "a", "a"), Opcode(Op.STEP_PLANNED, "b", "b")])
    assert (await store.apply(decide(first, run, Policy(1, Backoff()), fan_out, now))).outcome is Outcome.OK
    step_a = JobSpec(run_id, 0, kind=JobKind.PLANNED, step_key="a")
    planned = await store.load(step_a)
    assert isinstance(planned, LoadedRun)
    result = StepsReported([Opcode(Op.STEP_RUN, "a", "a", data=1)])
    plan = decide(step_a, planned, Policy(1, Backoff()), result, now)
    assert (await store.apply(plan)).outcome is Outcome.OK
    queued = await queued_jobs(redis, "t-nudge", run_id)

    written = await store.apply(plan)  # the same result again (a second delivery)

    assert written.outcome in (Outcome.STALE, Outcome.DUPLICATE) and written.nudged == "pending"
    assert await queued_jobs(redis, "t-nudge", run_id) == queued


async def test_a_run_of_a_function_this_worker_does_not_define_fails_naming_it(redis: Redis) -> None:
    store = RunStore(redis)
    executor = Executor(LocalFunctions({}), store, InProcessInvoker())
    run_id = "01NUDGE3000000000000000000"
    await store.create_run(
        run_id=run_id, fn_slug="t-nudge-gone", app_id="t-nudge", events=[stepq.Event(name="n")], dedupe_key=None
    )
    job = JobSpec(run_id, 0)

    await executor.advance({"job_id": job.job_id, "job_try": 1}, job.to_payload())

    view = await get_run(redis, run_id)
    assert view is not None and view.status == "failed", view
    assert view.error["name"] == "FunctionNotFound" and "t-nudge-gone" in view.error["message"]


# -- item 3: a sleep right after a sleep -----------------------------------------------------------


async def test_a_sleep_right_after_a_sleep_has_a_timer_and_survives_a_lost_wake_job(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("sleeps", env={"STEPQ_TIMER_SWEEP": "0.5", "STEPQ_TIMER_OVERDUE": "0.5"})
    started = time.time()
    run_id = await start_run(sender, redis, "nap-twice", "test/nap.twice", {"first": "1s", "second": "3s"})

    deadline = time.monotonic() + 15
    while len(await run_stack(redis, run_id)) < 2:  # 'before' and the first sleep are done
        assert time.monotonic() < deadline, await get_run(redis, run_id)
        await asyncio.sleep(0.02)
    view = await wait_for_run(redis, run_id, statuses=("sleeping",), timeout=10)
    assert view.wake_at_ms is not None and view.wake_at_ms > now_ms()
    timer = await redis.hget(keys.run(run_id), "timer")  # type: ignore[misc]
    assert timer is not None and await redis.zscore(keys.timers(0), timer) is not None

    # Lose the wake-up job (an eviction, a Redis that lost its last second of writes...).
    [wake_job] = await queued_jobs(redis, "t-sleeps", run_id)
    await redis.zrem(keys.queue(0, "t-sleeps"), wake_job)
    await redis.delete(keys.job(wake_job))

    done = await wait_for_run(redis, run_id, timeout=20)
    assert done.status == "completed", done.error
    assert done.output["after"] - started >= 4.0  # both sleeps were slept in full
    await assert_nothing_left(redis, "t-sleeps", run_id)


async def test_a_step_failing_right_after_a_wake_up_is_retried_and_the_run_completes(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("sleeps")
    run_id = await start_run(sender, redis, "nap-then-flaky", "test/nap.flaky", {})

    view = await wait_for_run(redis, run_id, timeout=20)

    assert view.status == "completed", view.error
    assert view.output == 1
    [flaky] = [s for s in view.steps if s.name == "flaky"]
    assert flaky.attempts == 2 and flaky.executions == 2, flaky
    await assert_nothing_left(redis, "t-sleeps", run_id)


# -- item 5: limits on every path ------------------------------------------------------------------


async def test_a_parallel_group_over_the_step_limit_fails_the_run_and_queues_nothing(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("limits")
    run_id = await start_run(sender, redis, "wide", "limits/wide", {"n": 1100})

    view = await wait_for_run(redis, run_id, timeout=30)

    assert view.status == "failed"
    assert view.error["name"] == "LimitExceeded"
    assert "limit of 1000 steps" in view.error["message"] and "1100 more" in view.error["message"], view.error
    assert await run_stack(redis, run_id) == []
    await assert_nothing_left(redis, "t-limits", run_id)


async def test_parallel_results_over_the_state_limit_fail_the_run(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("limits", env=SMALL_LIMITS)
    run_id = await start_run(sender, redis, "heavy-parallel", "limits/heavy.parallel", {"n": 10, "bytes": 200_000})

    view = await wait_for_run(redis, run_id, timeout=30)

    assert view.status == "failed", view.output
    assert view.error["name"] == "LimitExceeded" and "STEPQ_MAX_STATE_BYTES" in view.error["message"], view.error
    state = int(await redis.hget(keys.run(run_id), "state_bytes"))  # type: ignore[misc]
    assert state <= 1024 * 1024
    assert sum(len(v) for v in (await run_memo(redis, run_id)).values()) <= 1024 * 1024
    await assert_nothing_left(redis, "t-limits", run_id)


async def test_waited_events_over_the_state_limit_fail_the_run(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    # The events resolve the waits in this (the sending) process, which has the default limits: the
    # run lives within those its function was registered with by its workers.
    start_workers("limits", env=SMALL_LIMITS)
    run_id = await start_run(sender, redis, "heavy-waits", "limits/heavy.waits", {"n": 8, "tag": "t1"})
    await wait_for_run(redis, run_id, statuses=("waiting",), timeout=15)

    await sender.send(
        [stepq.Event(name="limits/blob", data={"tag": "t1", "i": i, "pad": "p" * 200_000}) for i in range(8)]
    )
    view = await wait_for_run(redis, run_id, timeout=30)

    assert view.status == "failed"
    assert view.error["name"] == "LimitExceeded" and "STEPQ_MAX_STATE_BYTES" in view.error["message"], view.error
    assert int(await redis.hget(keys.run(run_id), "state_bytes")) <= 1024 * 1024  # type: ignore[misc]
    await assert_nothing_left(redis, "t-limits", run_id)


async def test_invoked_results_over_the_state_limit_fail_the_parent(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("limits", env=SMALL_LIMITS)
    run_id = await start_run(sender, redis, "heavy-invokes", "limits/heavy.invokes", {"n": 8, "bytes": 200_000})

    view = await wait_for_run(redis, run_id, timeout=45)

    assert view.status == "failed"
    assert view.error["name"] == "LimitExceeded" and "STEPQ_MAX_STATE_BYTES" in view.error["message"], view.error
    assert int(await redis.hget(keys.run(run_id), "state_bytes")) <= 1024 * 1024  # type: ignore[misc]
    await assert_nothing_left(redis, "t-limits", run_id)


async def test_an_output_over_the_limit_fails_the_run_and_reaches_an_invoking_parent_as_a_step_error(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("limits", env=SMALL_LIMITS)
    parent = await start_run(sender, redis, "invoke-big", "limits/invoke.big", {"bytes": 300_000})

    view = await wait_for_run(redis, parent, timeout=30)

    assert view.status == "completed", view.error
    assert view.output["error"] == "OutputTooLarge", view.output
    assert "300" in view.output["message"] and "STEPQ_MAX_OUTPUT_BYTES" in view.output["message"], view.output
    [child] = await runs_of(redis, "big-child")
    assert child.status == "failed" and child.error["name"] == "OutputTooLarge" and child.output is None


# -- item 15: executions apart from attempts -------------------------------------------------------


async def test_a_step_run_twice_after_a_lost_lease_shows_two_executions_and_one_attempt(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """Worker A starts the slow step and is paused past its lease; worker B takes the job over and
    runs the step again; A, resumed, is fenced off. ``stepq run`` must show it."""
    [a, b] = start_workers("crash", n=2, env={"STEPQ_LEASE": "1"})
    marks = tmp_path / "marks.log"
    data = {"log": str(marks), "first_s": 3, "later_s": 0}
    run_id = await start_run(sender, redis, "slow-async", "test/slow.async", data)
    deadline = time.monotonic() + 15
    while not marks.exists() or not marks.read_text().strip():
        assert time.monotonic() < deadline, "the slow step never started"
        await asyncio.sleep(0.02)
    first_pid = int(marks.read_text().split()[1])
    paused = a if a.pid == first_pid else b
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        view = await wait_for_run(redis, run_id, timeout=30)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    assert view.status == "completed", view.error
    # The paused worker, resumed, finishes its execution and reports it: its write is refused (fenced
    # off, or the run is over by then) but the execution counts.
    deadline = time.monotonic() + 15
    while not any("-refused:" in str(c.get("outcome")) for c in invocations(paused.logs(), run_id)):
        assert time.monotonic() < deadline, paused.stderr()[-3000:]
        await asyncio.sleep(0.05)
    view = await wait_for_run(redis, run_id)

    [step] = [s for s in view.steps if s.name == "slow"]
    assert step.attempts == 1
    assert step.executions == 2, step
    executed_by = Counter(line.split()[1] for line in marks.read_text().splitlines() if line.startswith("start "))
    assert sorted(executed_by.values()) == [1, 1], executed_by
    shown = stepq_cli("run", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "executions=2" in shown.stdout and "attempts=1" in shown.stdout, shown.stdout
    assert "1 duplicate execution" in shown.stdout, shown.stdout
    as_json = json.loads(stepq_cli("run", run_id, "--json").stdout)
    assert as_json["duplicate_executions"] == 1


def _starts(marks: Path) -> list[int]:
    """The pids that began an execution of the crash app's slow step, in order."""
    text = marks.read_text() if marks.exists() else ""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("start ")]


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("order", ["resume-then-kill", "kill-then-resume"])
async def test_a_worker_that_lost_its_lease_never_ends_the_job_another_worker_took_over(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, order: str
) -> None:
    """A is paused past its lease while running a step; B takes the job over. Then either A resumes
    first (B holds the job) or B is killed first and its lease lapses too (nobody holds it). A
    finishes its execution: its commit is refused (fenced), and it must not end the job, so that
    once B is gone the job runs again and the run completes. (A worker ending a job it no longer
    held, or had taken back after B's lease lapsed, deleted it, and the run stayed running with
    nothing queued.)"""
    [a, b] = start_workers("crash", n=2, env={"STEPQ_LEASE": "1"})
    marks = tmp_path / "marks.log"
    data = {"log": str(marks), "first_s": 3, "later_s": 4}
    run_id = await start_run(sender, redis, "slow-async", "test/slow.async", data)
    await _until(lambda: bool(_starts(marks)), 15, "the slow step never started")
    first, second = (a, b) if _starts(marks)[0] == a.pid else (b, a)

    os.kill(first.pid, signal.SIGSTOP)
    try:
        await _until(lambda: len(_starts(marks)) >= 2, 15, f"no worker took the job over: {_starts(marks)}")
        if order == "kill-then-resume":
            second.proc.kill()  # before its execution (4 s) commits
            second.proc.wait(timeout=10)
            await asyncio.sleep(1.5)  # its lease lapses: nobody holds the job
    finally:
        os.kill(first.pid, signal.SIGCONT)
    fenced = "-refused:fenced"
    await _until(
        lambda: any(str(c.get("outcome")).endswith(fenced) for c in invocations(first.logs(), run_id)),
        30,
        first.stderr()[-3000:],
    )
    if order == "resume-then-kill":
        second.proc.kill()
        second.proc.wait(timeout=10)

    view = await wait_for_run(redis, run_id, timeout=30)

    assert view.status == "completed", view.error
    assert view.output["slow"]["pid"] == first.pid  # the job came back to the surviving worker
    await assert_nothing_left(redis, "t-crash", run_id)


async def test_a_wake_up_job_whose_worker_died_mid_step_runs_again(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """The wake-up job memoizes the sleep before it re-enters the run; its worker is killed in the
    step after the sleep. The job, taken over after the lease, must run that step again (it was
    dropped as stale, and the run stayed running with nothing queued)."""
    workers = start_workers("crash", n=2, env={"STEPQ_LEASE": "1"})
    marks = tmp_path / "marks.log"
    data = {"log": str(marks), "first_s": 30, "later_s": 0}
    run_id = await start_run(sender, redis, "nap-then-slow", "test/nap.slow", data)
    await _until(lambda: bool(_starts(marks)), 15, "the step after the sleep never started")
    [victim] = [w for w in workers if w.pid == _starts(marks)[0]]
    victim.proc.kill()
    victim.proc.wait(timeout=10)

    view = await wait_for_run(redis, run_id, timeout=30)

    assert view.status == "completed", view.error
    assert view.output["slow"]["pid"] != victim.pid
    await assert_nothing_left(redis, "t-crash", run_id)
