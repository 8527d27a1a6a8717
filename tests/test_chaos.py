"""Chaos: 300 ten-step runs over three workers while a random worker is SIGKILLed and replaced every 2 s.

Every run must complete with the right output, and each step's result must be committed once (the
run's stack holds its ten step keys once each, the memo ten entries, and every re-entry saw the same
result). Steps may execute more than once (delivery is at least once): the count is reported.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

from redis.asyncio import Redis

import stepq
from stepq.runtime.codec import unpack
from stepq.runtime.queries import RunView
from tests.apps.chaos import STEPS, executions_key, expected_values
from tests.helpers import REDIS_URL, StartWorkers, WorkerProcess, run_memo, run_stack, runs_of, sha1

RUNS = 300
FUNCTION = "ten-steps"
WORKERS = 3
KILL_EVERY_S = 2.0
#: Runs are sent over about this long, so that the kills fall on runs at every stage.
SEND_OVER_S = 16.0
#: Kills go on this long at most (they stop early once every run has ended)...
CHAOS_S = 30.0
#: ...then the fleet gets this long to finish the runs still going.
FINISH_S = 60.0
#: A short lease: a killed worker's jobs are taken over about 2 s after the kill.
ENV = {"STEPQ_LEASE": "2"}


async def settled(redis: Redis) -> tuple[bool, Counter[str]]:
    views = await runs_of(redis, FUNCTION, limit=RUNS * 2)
    statuses = Counter(v.status for v in views)
    done = sum(statuses[s] for s in ("completed", "failed", "cancelled"))
    return len(views) == RUNS and done == RUNS, statuses


def started(worker: WorkerProcess) -> bool:
    """True once the worker has registered its app (and so polls the queue)."""
    return any(entry.get("event") == "worker.started" for entry in worker.logs())


async def test_300_runs_complete_while_workers_are_killed_every_2_s(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    rng = random.Random(20261126)
    fleet: list[WorkerProcess] = start_workers("chaos", n=WORKERS, env=ENV)
    worker_env = {**os.environ, "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", "STEPQ_REDIS_URL": REDIS_URL, **ENV}
    began = time.monotonic()
    n_of_event: dict[str, int] = {}
    kills: list[float] = []

    async def send_all() -> None:
        batches = 20
        per_batch = RUNS // batches
        for b in range(batches):
            events = [
                stepq.Event(name="test/ten-steps", data={"n": n}) for n in range(b * per_batch, (b + 1) * per_batch)
            ]
            ids = await sender.send(events)
            n_of_event.update(zip(ids, range(b * per_batch, (b + 1) * per_batch), strict=True))
            await asyncio.sleep(SEND_OVER_S / batches)

    sending = asyncio.create_task(send_all())
    replacements: list[WorkerProcess] = []

    def replace() -> None:
        # Not waited for: the next kill comes on schedule whether or not the replacement is up.
        worker = WorkerProcess("chaos", 100 + len(replacements), tmp_path, worker_env)
        replacements.append(worker)
        fleet.append(worker)

    try:
        for tick in range(1, int(CHAOS_S / KILL_EVERY_S) + 1):
            await asyncio.sleep(max(0.0, began + KILL_EVERY_S * tick - time.monotonic()))
            if sending.done() and (await settled(redis))[0]:
                break
            ready = [w for w in fleet if w.alive() and started(w)]
            if not ready:
                continue
            victim = rng.choice(ready)
            victim.proc.kill()
            victim.proc.wait(timeout=10)
            kills.append(time.monotonic() - began)
            fleet.remove(victim)
            replace()
        await sending
        chaos_ended = time.monotonic()
        while True:
            done, statuses = await settled(redis)
            if done:
                break
            assert time.monotonic() - chaos_ended < FINISH_S, (
                f"runs not finished {FINISH_S} s after the last kill: {statuses}"
            )
            assert all(w.alive() for w in fleet), [w.stderr()[-3000:] for w in fleet if not w.alive()]
            await asyncio.sleep(0.1)
    finally:
        if not sending.done():
            sending.cancel()
        for worker in replacements:
            worker.stop()
    elapsed = time.monotonic() - began

    views: list[RunView] = await runs_of(redis, FUNCTION, limit=RUNS * 2)
    step_keys = [sha1(f"step-{i}") for i in range(1, STEPS + 1)]
    executions: dict[tuple[str, int], set[bytes]] = {}
    for view in views:
        for i in range(1, STEPS + 1):
            executions[view.run_id, i] = await redis.smembers(executions_key(view.run_id, i))  # type: ignore[misc]
    counts = Counter(len(tokens) for tokens in executions.values())
    duplicates = sum(len(tokens) - 1 for tokens in executions.values() if tokens)
    print(
        f"\nchaos: {RUNS} runs x {STEPS} steps over {WORKERS} workers in {elapsed:.1f} s, {len(kills)} SIGKILLs "
        f"(at {', '.join(f'{k:.0f}' for k in kills)} s); {sum(len(t) for t in executions.values())} step executions, "
        f"{duplicates} duplicate executions, {sum(c for k, c in counts.items() if k > 1)} steps executed more than "
        f"once (executions per step: {dict(sorted(counts.items()))})"
    )

    assert len(kills) >= 5, f"only {len(kills)} kills: the runs finished before the chaos did much"
    assert len(views) == RUNS
    inputs = set()
    for view in views:
        assert view.status == "completed", (view.run_id, view.status, view.error)
        [event_id] = view.event_ids
        n = n_of_event[event_id]
        inputs.add(n)
        assert view.output["n"] == n
        assert view.output["values"] == expected_values(n)
        # Each step committed once, in order...
        assert await run_stack(redis, view.run_id) == step_keys
        memo = {key: unpack(value) for key, value in (await run_memo(redis, view.run_id)).items()}
        assert set(memo) == set(step_keys)
        committed = [memo[key]["data"] for key in step_keys]
        assert [c["value"] for c in committed] == expected_values(n)
        # ...every re-entry saw that one result...
        assert view.output["tokens"] == [c["token"] for c in committed]
        # ...and it came from a real execution of the step.
        for i, c in enumerate(committed, 1):
            assert c["token"].encode() in executions[view.run_id, i], (view.run_id, i)
    assert inputs == set(range(RUNS))
