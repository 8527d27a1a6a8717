"""Crash recovery: SIGKILL the worker running a step; how long until the step starts again elsewhere?

Two stepq workers with default settings (step timeout 2 h). A run's only step records which worker
started it, then sleeps 30 s. Once it has started, that worker is SIGKILLed and the clock runs until
the step starts again in the other worker. The remaining life of the job's lock at the kill is
recorded too: it is what recovery waits for. Baseline: the lock a raw arq worker with the same job
timeout puts on a running job (arq never renews or shortens it, so a killed job waits that long).
"""

from __future__ import annotations

import time

from bench.common import BenchError, BenchResult, Clients, Env, Metric, Proc, Target, clients, wait_until

NAME = "recovery"
STEP_S = 30.0


async def _started(c: Clients, key: str, n: int) -> list[tuple[int, float]]:
    raw = await c.marks.lrange(key, 0, -1)  # type: ignore[misc]
    marks = [(int(pid), float(t)) for pid, t in (v.split() for v in raw)]
    return marks if len(marks) >= n else []


async def _lock_ttl_ms(c: Clients) -> int | None:
    """Remaining life of the (single) arq in-progress lock, in ms."""
    async for key in c.redis.scan_iter(match="arq:in-progress:*"):
        ttl = int(await c.redis.pttl(key))
        return ttl if ttl >= 0 else None
    return None


async def stepq_once(env: Env, rep: int, bound: float) -> dict[str, float | bool | None]:
    async with env.redis(f"{NAME}-{rep}") as server, clients(server) as c:
        workers = await env.stepq_workers(server, 2)
        key = f"crash:{rep}"
        await c.send("bench/crash", {"key": key, "seconds": STEP_S})
        await wait_until(lambda: _has(c, key, 1), 30, "the long step to start", watch=workers)
        (pid, started), *_ = await _started(c, key, 1)
        victim = next((w for w in workers if w.pid == pid), None)
        if victim is None:
            raise BenchError(f"the step started in pid {pid}, which is none of the workers")
        lock_ms = await _lock_ttl_ms(c)
        killed = time.time()
        victim.kill()
        survivors: list[Proc] = [w for w in workers if w is not victim]
        try:
            await wait_until(lambda: _has(c, key, 2), bound, "the step to start again", interval=0.005, watch=survivors)
        except BenchError:
            if any(not w.alive() for w in survivors):
                raise
            return {"recovered": False, "seconds": bound, "lock_ttl_at_kill_s": _s(lock_ms), "since_start_s": None}
        marks = await _started(c, key, 2)
        again_pid, again = marks[1]
        for w in survivors:
            w.kill()
        return {
            "recovered": True,
            "seconds": again - killed,
            "lock_ttl_at_kill_s": _s(lock_ms),
            "since_first_start_s": again - started,
            "restarted_elsewhere": again_pid != pid,
        }


async def _has(c: Clients, key: str, n: int) -> bool:
    return int(await c.marks.llen(key)) >= n  # type: ignore[misc]


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


async def arq_lock(env: Env) -> float | None:
    """The lock (in-progress TTL, s) a raw arq worker with stepq's job timeout puts on a running job."""
    async with env.redis(f"{NAME}-arq") as server, clients(server) as c:
        workers = await env.arq_workers(server)
        await c.arq.enqueue_job("long", "arq", STEP_S)
        await wait_until(lambda: _has(c, "arq", 1), 30, "the arq job to start", watch=workers)
        ttl = await _lock_ttl_ms(c)
        for w in workers:
            w.kill()
        return _s(ttl)


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    reps = env.size(3, 1)
    bound = env.size(40, 20)
    trials = [await stepq_once(env, rep, bound) for rep in range(reps)]
    arq_ttl = await arq_lock(env)
    recovered = [t for t in trials if t["recovered"]]
    worst = max(float(t["seconds"] or 0) for t in trials)
    censored = len(recovered) < len(trials)
    result.details = {"trials": trials, "step_s": STEP_S, "wait_bound_s": bound, "arq_lock_ttl_s": arq_ttl}
    note = ""
    if censored:
        ttl = max((t["lock_ttl_at_kill_s"] or 0) for t in trials)
        note = f"not re-run within {bound:g} s of the kill; the job's lock had {ttl:.0f} s left at the kill"
    result.metrics = [
        Metric(
            f"crash recovery, SIGKILL -> step restarted (worst of {reps})",
            "s",
            worst,
            arq_ttl,
            "raw arq in-progress lock for the same job timeout (a killed job waits it out)",
            Target("<=", 15),
            censored=censored,
            note=note,
        )
    ]
    return result
