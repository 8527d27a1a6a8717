"""Replay cost: the time of a 1,000-step loop against a 100-step loop, one run at a time.

Each invocation re-enters the function from the top and replays every memoized step, so invocation
i does O(i) work and an n-step run O(n²) in total; linear behaviour gives 10x for 10x the steps.
stepq: a function looping over no-op steps; the first step records its start and the last
invocation (the one that gets past the loop) records its end. Baseline: a chain of n+1 raw arq jobs
timed from the first job's start to the last's, the same number of transitions with no replay.
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
    io_per,
    io_stats,
    median,
    queues_idle,
    wait_until,
)

NAME = "replay"


async def _has(c: Clients, key: str, n: int) -> bool:
    return int(await c.marks.llen(key)) >= n  # type: ignore[misc]


async def stepq_loop(c: Clients, key: str, n: int, watch: list[Proc]) -> tuple[float, dict[str, float]]:
    """Seconds from the first step's start to the final invocation of an n-step loop; Redis I/O per step."""
    before = await io_stats(c.redis)
    await c.send("bench/loop", {"n": n, "key": key})
    await wait_until(lambda: _has(c, key, 2), 60 + n * 0.2, f"a {n}-step loop", interval=0.05, watch=watch)
    await wait_until(lambda: queues_idle(c.redis), 30, "the run to finish", watch=watch)
    io = io_per(before, await io_stats(c.redis), n)
    start, end = await floats(c.marks, key)
    return end - start, io


async def arq_chain(c: Clients, key: str, n: int, watch: list[Proc]) -> tuple[float, dict[str, float]]:
    """Seconds from the first to the last start of a chain of n+1 raw arq jobs; Redis I/O per hop."""
    before = await io_stats(c.redis)
    await c.arq.enqueue_job("hop", key, 0, n, False)
    await wait_until(lambda: _has(c, key, 2), 60 + n * 0.2, f"a {n}-hop arq chain", interval=0.05, watch=watch)
    await wait_until(lambda: queues_idle(c.redis), 30, "the chain to finish", watch=watch)
    io = io_per(before, await io_stats(c.redis), n)
    start, end = await floats(c.marks, key)
    return end - start, io


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    small, big = env.size(100, 20), env.size(1000, 200)
    rounds = {small: env.size(3, 2), big: env.size(2, 1)}
    seconds: dict[str, dict[int, list[float]]] = {"stepq": {small: [], big: []}, "arq": {small: [], big: []}}
    io: dict[str, dict[int, dict[str, float]]] = {"stepq": {}, "arq": {}}
    async with env.redis(NAME) as server, clients(server) as c:
        watch = await env.arq_workers(server) + await env.stepq_workers(server)
        await stepq_loop(c, "warm:stepq", 5, watch)
        await arq_chain(c, "warm:arq", 5, watch)
        for r in range(max(rounds.values())):
            for n in (small, big):
                if r >= rounds[n]:
                    continue
                for system in ("stepq", "arq") if r % 2 == 0 else ("arq", "stepq"):
                    measure = stepq_loop if system == "stepq" else arq_chain
                    took, io[system][n] = await measure(c, f"{system}:{n}:{r}", n, watch)
                    seconds[system][n].append(took)
        if env.profile_dir is not None:
            from bench.profiling import PySpy, analyse

            spy = PySpy(watch[-1].pid, env.profile_dir / "replay-stepq-worker.txt")
            try:
                await stepq_loop(c, "profile", big, watch)
            finally:
                spy.stop()
            result.details["profile"] = analyse(spy.out)
    med = {s: {n: median(v) for n, v in by_n.items()} for s, by_n in seconds.items()}
    stepq_ratio = med["stepq"][big] / med["stepq"][small]
    arq_ratio = med["arq"][big] / med["arq"][small]
    result.details |= {
        "sizes": [small, big],
        "rounds": {str(n): r for n, r in rounds.items()},
        "seconds": {s: {str(n): [round(x, 4) for x in v] for n, v in by_n.items()} for s, by_n in seconds.items()},
        "ms_per_step": {s: {str(n): round(1000 * med[s][n] / n, 3) for n in (small, big)} for s in med},
        "redis_io_per_step_last_round": {s: {str(n): v for n, v in by_n.items()} for s, by_n in io.items()},
        "stepq_extra_ms_per_step_at_big": round(1000 * (med["stepq"][big] / big - med["stepq"][small] / small), 3),
    }
    result.metrics = [
        Metric(
            f"replay: {big}-step loop time / {small}-step loop time",
            "x",
            stepq_ratio,
            arq_ratio,
            f"raw arq chain of {big} hops / of {small} hops (no replay)",
            Target("<=", 12),
        ),
        Metric(
            f"replay: {big}-step loop time", "s", med["stepq"][big], med["arq"][big], f"raw arq chain of {big} hops"
        ),
    ]
    return result
