"""Throughput: steps/s for 1,000 runs x 10 steps with 1 and 2 worker processes, against raw arq.

Every case is a drain: the work is written to a staging key first, the workers are started and
registered, then one RENAME puts it on the queue they poll, and the clock runs until the queue is
empty. So neither enqueueing nor process start-up is timed, for stepq or for arq. The work is split
into rounds and the cases take turns within each round, so that load from elsewhere on a shared
machine falls on all of them alike; a rate is total work / total time over the rounds.

- stepq: runs of a 10-step function whose steps are no-op plain ``def`` functions, as a
  ``lambda: ...`` step is (11 jobs per run: one per step, one to return), created through
  ``Client.send`` before the gate opens.
- raw arq no-op (the baseline of the target): as many no-op jobs as stepq has steps, on workers
  with stepq's settings.
- raw arq chained (context): chains of 10 jobs, each enqueueing the next with arq's ``enqueue_job``;
  the nearest thing in raw arq to what a step does.
- stepq, async steps (context, 1 worker): the same runs with ``async def`` no-op steps, which stepq
  awaits in the event loop instead of handing to a thread.

Also recorded per case: worker and Redis CPU, Redis round trips, bytes and commands per step or job.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    APP_ID,
    ARQ_QUEUE,
    BenchError,
    BenchResult,
    Clients,
    Env,
    Metric,
    Proc,
    RedisServer,
    Target,
    clients,
    command_calls,
    cpu_seconds,
    io_per,
    io_stats,
    median,
    redis_cpu,
    stepq_queue,
    wait_until,
)

NAME = "throughput"
STAGING = "bench:staging"
STEPS = 10

Case = Callable[["Env", RedisServer, Clients, int, int], Awaitable[dict[str, Any]]]


async def _drain(c: Clients, queue: str, workers: list[Proc], units: int, timeout: float) -> dict[str, Any]:
    """Open the gate (RENAME staging -> queue), wait for the queue to empty; time, CPU and Redis I/O."""
    await c.redis.config_resetstat()
    worker_cpu = sum(cpu_seconds(p.pid) for p in workers)
    server_cpu = await redis_cpu(c.redis)
    io_before = await io_stats(c.redis)
    began = time.perf_counter()
    await c.redis.rename(STAGING, queue)
    if queue == stepq_queue():
        # stepq's workers wait on the queue's ready list, which an enqueue pushes to; the gate
        # enqueued nothing, so wake them as an enqueue would
        from stepq.runtime import keys

        await c.redis.lpush(keys.ready(0, APP_ID), b"1")  # type: ignore[misc]

    async def empty() -> bool:
        return int(await c.redis.zcard(queue)) == 0

    await wait_until(empty, timeout, f"{queue} to drain", interval=0.005, watch=workers)
    seconds = time.perf_counter() - began
    io = io_per(io_before, await io_stats(c.redis), units)
    calls = await command_calls(c.redis)
    polls = calls.get("zcard", 0) + 1  # our own polling, and the RENAME
    io["round_trips"] = round(io["round_trips"] - polls / units, 2)
    io["commands"] = round(io["commands"] - polls / units, 2)
    return {
        "units": units,
        "seconds": seconds,
        "worker_cpu_s": sum(cpu_seconds(p.pid) for p in workers) - worker_cpu,
        "redis_cpu_s": await redis_cpu(c.redis) - server_cpu,
        "redis_io_per_unit": io,
        "top_commands": dict(sorted(((k, v) for k, v in calls.items() if k != "zcard"), key=lambda kv: -kv[1])[:10]),
    }


async def arq_noop(env: Env, server: RedisServer, c: Clients, n_workers: int, jobs: int) -> dict[str, Any]:
    await c.redis.delete(STAGING)
    await c.prefill_arq(STAGING, "noop", [()] * jobs)
    workers = await env.arq_workers(server, n_workers)
    try:
        return await _drain(c, ARQ_QUEUE, workers, jobs, timeout=60 + jobs / 100)
    finally:
        for w in workers:
            w.stop()


async def arq_chained(env: Env, server: RedisServer, c: Clients, n_workers: int, jobs: int) -> dict[str, Any]:
    chains = jobs // STEPS
    await c.redis.delete(STAGING)
    await c.prefill_arq(STAGING, "hop", [("", 0, STEPS - 1, False)] * chains)
    workers = await env.arq_workers(server, n_workers)
    try:
        return await _drain(c, ARQ_QUEUE, workers, chains * STEPS, timeout=60 + jobs / 100)
    finally:
        for w in workers:
            w.stop()


async def _register(c: Clients) -> None:
    """Register the bench app as a worker would, so events route to it before any worker runs."""
    from bench.apps import client
    from stepq.runtime.registry import Registry

    await Registry(c.redis).register_app(APP_ID, [fn.config() for fn in client.functions.values()])


async def stepq_runs(
    env: Env,
    server: RedisServer,
    c: Clients,
    n_workers: int,
    steps: int,
    *,
    async_steps: bool = False,
    profile: str | None = None,
) -> dict[str, Any]:
    from stepq.runtime import keys

    runs = steps // STEPS
    await c.redis.delete(STAGING, keys.runs_done(0), keys.runs_active(0))
    await _register(c)
    data: dict[str, Any] = {"n": STEPS, "async": async_steps}
    for start in range(0, runs, 250):
        await c.send("bench/steps", [data] * min(250, runs - start))
    queued = int(await c.redis.zcard(stepq_queue()))
    if queued != runs:
        raise BenchError(f"expected {runs} first jobs on {stepq_queue()}, found {queued}")
    await c.redis.rename(stepq_queue(), STAGING)
    workers = await env.stepq_workers(server, n_workers)
    spy = None
    if profile is not None and env.profile_dir is not None:
        from bench.profiling import PySpy

        spy = PySpy(workers[0].pid, env.profile_dir / profile)
    try:
        stats = await _drain(c, stepq_queue(), workers, runs * STEPS, timeout=60 + runs * STEPS / 50)
    finally:
        if spy is not None:
            spy.stop()
        for w in workers:
            w.stop()
    done, active = int(await c.redis.zcard(keys.runs_done(0))), int(await c.redis.zcard(keys.runs_active(0)))
    if done != runs or active:
        raise BenchError(f"stepq drain ended with {done} runs done and {active} active, of {runs}")
    if spy is not None:
        from bench.profiling import analyse

        stats["profile"] = analyse(spy.out)
    return stats


async def stepq_sync(env: Env, server: RedisServer, c: Clients, n_workers: int, steps: int) -> dict[str, Any]:
    return await stepq_runs(env, server, c, n_workers, steps)


async def stepq_async(env: Env, server: RedisServer, c: Clients, n_workers: int, steps: int) -> dict[str, Any]:
    return await stepq_runs(env, server, c, n_workers, steps, async_steps=True)


def _total(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates over all rounds, and per-unit costs."""
    units = sum(r["units"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    io_keys = rounds[0]["redis_io_per_unit"].keys()
    return {
        "per_s": round(units / seconds, 1),
        "units": units,
        "seconds": round(seconds, 3),
        "per_s_by_round": [round(r["units"] / r["seconds"], 1) for r in rounds],
        "worker_cpu_ms_per_unit": round(1000 * sum(r["worker_cpu_s"] for r in rounds) / units, 4),
        "redis_cpu_ms_per_unit": round(1000 * sum(r["redis_cpu_s"] for r in rounds) / units, 4),
        "redis_io_per_unit": {
            k: round(sum(r["redis_io_per_unit"][k] * r["units"] for r in rounds) / units, 2) for k in io_keys
        },
        "top_commands_last_round": rounds[-1]["top_commands"],
    }


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    runs = env.size(1000, 100)
    n_rounds = env.size(4, 1)
    per_round = runs // n_rounds * STEPS  # steps (stepq) or jobs (arq) per case per round
    result.details = {"runs": runs, "steps_per_run": STEPS, "rounds": n_rounds, "units_per_case_per_round": per_round}
    # 4 workers on this 2-core machine shows the cost of over-subscription (README: scale-out figures).
    for n_workers in (1, 2, 4):
        cases: dict[str, Case] = {"stepq": stepq_sync, "arq_noop": arq_noop}
        if n_workers < 4:
            cases["arq_chained"] = arq_chained
        if n_workers == 1 and not env.quick:
            cases["stepq_async_steps"] = stepq_async
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
        async with env.redis(f"{NAME}-{n_workers}") as server, clients(server) as c:
            names = list(cases)
            for r in range(n_rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    rounds[name].append(await cases[name](env, server, c, n_workers, per_round))
            if env.profile_dir is not None and n_workers == 1:
                profiled = await stepq_runs(env, server, c, 1, per_round, profile="throughput-stepq-worker.txt")
                result.details["profile"] = profiled["profile"]
        totals = {name: _total(rs) for name, rs in rounds.items()}
        ratios = [
            s["units"] / s["seconds"] / (a["units"] / a["seconds"])
            for s, a in zip(*map(rounds.get, ("stepq", "arq_noop")), strict=True)
        ]
        plural = "s" if n_workers > 1 else ""
        result.details[f"{n_workers}_worker{plural}"] = totals | {
            "stepq_vs_noop_ratio_median_of_rounds": round(median(ratios), 3)
        }
        result.metrics += [
            Metric(
                f"throughput, {n_workers} worker{plural} ({runs} runs x {STEPS} steps)",
                "steps/s",
                totals["stepq"]["per_s"],
                totals["arq_noop"]["per_s"],
                "raw arq no-op jobs/s",
                Target("ratio>=", 0.6) if n_workers == 2 else None,
                note="" if n_workers == 2 else "the target applies to 2 workers (brief §4)",
            ),
        ]
        if "arq_chained" in totals:
            result.metrics.append(
                Metric(
                    f"throughput vs chained arq, {n_workers} worker{plural}",
                    "steps/s",
                    totals["stepq"]["per_s"],
                    totals["arq_chained"]["per_s"],
                    "raw arq chained jobs/s (each job enqueues the next)",
                )
            )
        if "stepq_async_steps" in totals:
            result.metrics.append(
                Metric(
                    f"throughput with async def steps, {n_workers} worker{plural}",
                    "steps/s",
                    totals["stepq_async_steps"]["per_s"],
                    totals["arq_noop"]["per_s"],
                    "raw arq no-op jobs/s",
                )
            )
    return result
