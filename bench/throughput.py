"""Throughput: steps/s for 1,000 runs x 10 steps with 1 and 2 worker processes, against raw arq.

Every case is a drain: the work is written to a staging key first, the workers are started and
registered, then one RENAME puts it on the queue they poll, and the clock runs until the queue is
empty. So neither enqueueing nor process start-up is timed, for stepq or for arq.

- stepq: 1,000 runs of a 10-step function with no-op steps (11 jobs per run: one per step, one to
  return), created through ``Client.send`` before the gate opens.
- raw arq no-op (the baseline of the target): 10,000 no-op jobs, measured before and after stepq and
  averaged, on workers with stepq's settings.
- raw arq chained (for context): 1,000 chains of 10 jobs, each job enqueueing the next with arq's
  ``enqueue_job``; the nearest thing in raw arq to what a step does.

Also recorded per case: worker and Redis CPU per step or job, and Redis commands per step or job.
"""

from __future__ import annotations

import time
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
    redis_cpu,
    stepq_queue,
    wait_until,
)

NAME = "throughput"
STAGING = "bench:staging"
STEPS = 10


async def _drain(c: Clients, queue: str, workers: list[Proc], timeout: float) -> dict[str, Any]:
    """Open the gate (RENAME staging -> queue), wait for the queue to empty; time, CPU and commands."""
    await c.redis.config_resetstat()
    worker_cpu = sum(cpu_seconds(p.pid) for p in workers)
    server_cpu = await redis_cpu(c.redis)
    began = time.perf_counter()
    await c.redis.rename(STAGING, queue)

    async def empty() -> bool:
        return int(await c.redis.zcard(queue)) == 0

    await wait_until(empty, timeout, f"{queue} to drain", interval=0.005, watch=workers)
    seconds = time.perf_counter() - began
    calls = await command_calls(c.redis)
    return {
        "seconds": seconds,
        "worker_cpu_s": sum(cpu_seconds(p.pid) for p in workers) - worker_cpu,
        "redis_cpu_s": await redis_cpu(c.redis) - server_cpu,
        "redis_calls": sum(n for name, n in calls.items() if name not in ("zcard", "config|resetstat", "rename")),
        "redis_calls_by_command": dict(sorted(calls.items(), key=lambda kv: -kv[1])[:12]),
    }


def _per(stats: dict[str, Any], units: int, label: str) -> dict[str, Any]:
    return {
        f"{label}_per_s": round(units / stats["seconds"], 1),
        "seconds": round(stats["seconds"], 3),
        f"worker_cpu_ms_per_{label}": round(1000 * stats["worker_cpu_s"] / units, 4),
        f"redis_cpu_ms_per_{label}": round(1000 * stats["redis_cpu_s"] / units, 4),
        f"redis_commands_per_{label}": round(stats["redis_calls"] / units, 2),
        "redis_commands": stats["redis_calls_by_command"],
    }


async def arq_noop(env: Env, server: RedisServer, c: Clients, n_workers: int, jobs: int) -> dict[str, Any]:
    await c.redis.delete(STAGING)
    await c.prefill_arq(STAGING, "noop", [()] * jobs)
    workers = await env.arq_workers(server, n_workers)
    try:
        stats = await _drain(c, ARQ_QUEUE, workers, timeout=60 + jobs / 100)
    finally:
        for w in workers:
            w.stop()
    return _per(stats, jobs, "job")


async def arq_chained(env: Env, server: RedisServer, c: Clients, n_workers: int, chains: int) -> dict[str, Any]:
    await c.redis.delete(STAGING)
    await c.prefill_arq(STAGING, "hop", [("", 0, STEPS - 1, False)] * chains)
    workers = await env.arq_workers(server, n_workers)
    try:
        stats = await _drain(c, ARQ_QUEUE, workers, timeout=60 + chains * STEPS / 100)
    finally:
        for w in workers:
            w.stop()
    return _per(stats, chains * STEPS, "job")


async def _register(c: Clients) -> None:
    """Register the bench app as a worker would, so events route to it before any worker runs."""
    from bench.apps import client
    from runtime.registry import Registry

    await Registry(c.redis).register_app(APP_ID, [fn.config() for fn in client.functions.values()])


async def stepq_runs(
    env: Env, server: RedisServer, c: Clients, n_workers: int, runs: int, profile: str | None = None
) -> dict[str, Any]:
    from runtime import keys

    await c.redis.delete(STAGING, keys.RUNS_DONE, keys.RUNS_ACTIVE)
    await _register(c)
    for start in range(0, runs, 250):
        await c.send("bench/steps", [{"n": STEPS}] * min(250, runs - start))
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
        stats = await _drain(c, stepq_queue(), workers, timeout=60 + runs * STEPS / 50)
    finally:
        if spy is not None:
            spy.stop()
        for w in workers:
            w.stop()
    done, active = int(await c.redis.zcard(keys.RUNS_DONE)), int(await c.redis.zcard(keys.RUNS_ACTIVE))
    if done != runs or active:
        raise BenchError(f"stepq drain ended with {done} runs done and {active} active, of {runs}")
    out = _per(stats, runs * STEPS, "step")
    out["jobs_per_step"] = (STEPS + 1) / STEPS
    if spy is not None:
        from bench.profiling import analyse

        out["profile"] = analyse(spy.out)
    return out


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    runs = env.size(1000, 200)
    jobs = runs * STEPS
    result.details = {"runs": runs, "steps_per_run": STEPS, "arq_noop_jobs": jobs, "arq_chains": runs}
    for n_workers in (1, 2):
        async with env.redis(f"{NAME}-{n_workers}") as server, clients(server) as c:
            before = await arq_noop(env, server, c, n_workers, jobs)
            chained = await arq_chained(env, server, c, n_workers, runs)
            stepq = await stepq_runs(env, server, c, n_workers, runs)
            after = await arq_noop(env, server, c, n_workers, jobs)
            if env.profile_dir is not None and n_workers == 1:
                profiled = await stepq_runs(env, server, c, 1, runs, profile="throughput-stepq-worker.txt")
                result.details["profile"] = profiled.pop("profile")
        noop_rate = (before["job_per_s"] + after["job_per_s"]) / 2
        plural = "s" if n_workers > 1 else ""
        result.details[f"{n_workers}_worker{plural}"] = {
            "stepq": stepq,
            "arq_noop_before": before,
            "arq_noop_after": after,
            "arq_chained": chained,
        }
        result.metrics += [
            Metric(
                f"throughput, {n_workers} worker{plural} ({runs} runs x {STEPS} steps)",
                "steps/s",
                stepq["step_per_s"],
                noop_rate,
                "raw arq no-op jobs/s (mean of runs before and after stepq)",
                Target("ratio>=", 0.6) if n_workers == 2 else None,
                note="" if n_workers == 2 else "the target applies to 2 workers (brief §4)",
            ),
            Metric(
                f"throughput vs chained arq, {n_workers} worker{plural}",
                "steps/s",
                stepq["step_per_s"],
                chained["job_per_s"],
                "raw arq chained jobs/s (each job enqueues the next)",
            ),
        ]
    return result
