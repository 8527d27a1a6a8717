"""Sequential latency per step: one run of a 100-step function on an idle worker.

stepq: each step records when it started; a hop is start(i+1) - start(i), which covers committing
step i, enqueueing the next job, the queue poll, loading the run, replaying the i memoized steps and
entering step i+1. Baseline: a chain of raw arq jobs, each recording its start and enqueueing the
next, on an arq worker with the same poll delay. Rounds alternate which goes first; both workers run
throughout (each idles while the other is measured).
"""

from __future__ import annotations

from bench.common import (
    BenchResult,
    Clients,
    Env,
    Metric,
    Proc,
    Target,
    clients,
    floats,
    gaps,
    percentile,
    queues_idle,
    summarize,
    wait_until,
)

NAME = "latency"


async def arq_chain(c: Clients, key: str, n: int, watch: list[Proc]) -> list[float]:
    """Run a chain of ``n`` raw arq jobs; return their start times."""
    await c.arq.enqueue_job("hop", key, 0, n - 1, True)
    await wait_until(lambda: _has(c, key, n), 30 + n * 0.5, f"{n} arq hops", watch=watch)
    await wait_until(lambda: queues_idle(c.redis), 30, "the arq queue to empty", watch=watch)
    return await floats(c.marks, key)


async def stepq_chain(c: Clients, key: str, n: int, watch: list[Proc]) -> list[float]:
    """Run one stepq run of ``n`` steps; return the steps' start times."""
    await c.send("bench/chain", {"n": n, "key": key})
    await wait_until(lambda: _has(c, key, n), 30 + n * 0.5, f"{n} stepq steps", watch=watch)
    await wait_until(lambda: queues_idle(c.redis), 30, "the stepq run to finish", watch=watch)
    return await floats(c.marks, key)


async def _has(c: Clients, key: str, n: int) -> bool:
    return int(await c.marks.llen(key)) >= n  # type: ignore[misc]


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    steps = 100
    rounds = env.size(5, 1)
    async with env.redis(NAME) as server, clients(server) as c:
        arq_workers = await env.arq_workers(server)
        stepq_workers = await env.stepq_workers(server)
        watch = arq_workers + stepq_workers
        await arq_chain(c, "warm:arq", 5, watch)
        await stepq_chain(c, "warm:stepq", 5, watch)
        hops: dict[str, list[float]] = {"arq": [], "stepq": []}
        per_round: dict[str, list[float]] = {"arq": [], "stepq": []}
        for r in range(rounds):
            for system in ("arq", "stepq") if r % 2 == 0 else ("stepq", "arq"):
                chain = arq_chain if system == "arq" else stepq_chain
                round_hops = gaps(await chain(c, f"{system}:{r}", steps, watch))
                hops[system] += round_hops
                per_round[system].append(round(percentile(round_hops, 50), 3))

        result.details = {
            "steps_per_run": steps,
            "rounds": rounds,
            "poll_delay_s": 0.005,
            "stepq_hop_ms": summarize(hops["stepq"]),
            "arq_hop_ms": summarize(hops["arq"]),
            "p50_per_round_ms": per_round,
            "stepq_hop_ms_by_position": _by_position(hops["stepq"], steps - 1),
        }
        label = "raw arq chained hop"
        result.metrics = [
            Metric(
                f"per-step latency p50 ({steps}-step run)",
                "ms",
                percentile(hops["stepq"], 50),
                percentile(hops["arq"], 50),
                label,
                Target("ratio<=", 1.5),
            ),
            Metric(
                f"per-step latency p99 ({steps}-step run)",
                "ms",
                percentile(hops["stepq"], 99),
                percentile(hops["arq"], 99),
                label,
            ),
        ]
        if env.profile_dir is not None:
            from bench.profiling import PySpy, analyse

            spy = PySpy(stepq_workers[0].pid, env.profile_dir / "latency-stepq-worker.txt")
            try:
                for r in range(10):
                    await stepq_chain(c, f"profile:{r}", steps, watch)
            finally:
                spy.stop()
            result.details["profile"] = analyse(spy.out)
    return result


def _by_position(hops: list[float], per_run: int) -> dict[str, float]:
    """Median hop for early, middle and late steps of the run: does replay make later steps slower?"""
    if not hops:
        return {}
    positions: dict[str, list[float]] = {"first_10": [], "middle": [], "last_10": []}
    for i, hop in enumerate(hops):
        at = i % per_run
        bucket = "first_10" if at < 10 else "last_10" if at >= per_run - 10 else "middle"
        positions[bucket].append(hop)
    return {k: round(percentile(v, 50), 3) for k, v in positions.items() if v}
