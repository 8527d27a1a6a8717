"""Redis memory per sleeping run: 1,000 runs sleeping an hour, INFO memory before and after.

Events carry empty data, so what is measured is stepq's own overhead per run (the "plus payloads"
of the target is zero here). Both readings are taken with no worker connected (a worker opens more
connections, with their buffers, as more jobs run at once: not memory a run holds), after a warm-up
batch of runs has created the indexes and loaded the scripts. One run's keys are measured with
MEMORY USAGE for a breakdown. Baseline: raw arq jobs deferred an hour, with a similar small
argument, measured in the same server.
"""

from __future__ import annotations

from typing import Any

from bench.common import BenchResult, Clients, Env, Metric, Proc, Target, clients, wait_until

NAME = "memory"


async def _memory(c: Clients) -> dict[str, int]:
    info = await c.redis.info("memory")
    used = int(info["used_memory"])
    client_buffers = int(info.get("mem_clients_normal", 0))
    return {"used_memory": used, "mem_clients_normal": client_buffers, "used_minus_clients": used - client_buffers}


async def _sleepers(c: Clients, n: int, total: int, watch: list[Proc]) -> None:
    """Start ``n`` sleeper runs and wait until ``total`` runs sleep (one timer each, no job due)."""
    from stepq.runtime import keys

    for start in range(0, n, 100):
        await c.send("bench/sleeper", [{}] * min(100, n - start))

    async def asleep() -> bool:
        return int(await c.redis.zcard(keys.timers(0))) >= total

    await wait_until(asleep, 60 + n / 20, f"{total} runs to sleep", interval=0.05, watch=watch)


async def _breakdown(c: Clients) -> dict[str, Any]:
    """MEMORY USAGE of each key of one sleeping run (its own keys, its event, its wake-up job)."""
    from stepq.runtime.queries import list_runs
    from stepq.runtime.run_status import RunStatus

    views = await list_runs(c.redis, function="sleeper", status=RunStatus.SLEEPING, limit=1)
    if not views:
        return {}
    view = views[0]
    names = [k async for k in c.redis.scan_iter(match=f"*{view.run_id}*", count=1000)]
    names += [f"stepq:event:{e}".encode() for e in view.event_ids]
    sizes: dict[str, int] = {}
    fields: dict[str, dict[str, int]] = {}
    for name in names:
        usage = await c.redis.memory_usage(name, samples=0)
        if usage is None:
            continue
        label = name.decode().replace(view.run_id, "<run>")
        sizes[label] = int(usage)
        kind = (await c.redis.type(name)).decode()
        encoding = (await c.redis.object("encoding", name)).decode()
        label_kind = f"{label} ({kind}, {encoding})"
        if kind == "hash":
            raw = await c.redis.hgetall(name)  # type: ignore[misc]
            fields[label_kind] = {k.decode(): len(v) for k, v in raw.items()}
        else:
            fields[label_kind] = {"value_bytes": int(await c.redis.strlen(name)) if kind == "string" else -1}
    zsets: dict[str, int] = {}
    async for key in c.redis.scan_iter(_type="zset"):
        zsets[key.decode()] = int(await c.redis.zcard(key))
    return {
        "status": view.status,
        "keys": sizes,
        "keys_total": sum(sizes.values()),
        "fields_and_value_lengths": fields,
        "zsets_with_one_entry_per_run": zsets,
    }


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    runs = env.size(1000, 200)
    warm = env.size(100, 20)
    async with env.redis(NAME) as server, clients(server) as c:
        workers = await env.stepq_workers(server)
        await _sleepers(c, warm, warm, workers)  # scripts and indexes exist before the first reading
        for w in workers:
            w.stop()
        before = await _memory(c)
        workers = await env.stepq_workers(server)
        await _sleepers(c, runs, warm + runs, workers)
        for w in workers:
            w.stop()
        after = await _memory(c)
        breakdown = await _breakdown(c)
        arq_before = await _memory(c)
        for _ in range(runs):
            await c.arq.enqueue_job("late", "memory-baseline", _defer_by=3600)
        arq_after = await _memory(c)
    per_run = (after["used_memory"] - before["used_memory"]) / runs
    per_job = (arq_after["used_memory"] - arq_before["used_memory"]) / runs
    result.details = {
        "runs": runs,
        "warm_runs": warm,
        "stepq_before": before,
        "stepq_after": after,
        "stepq_bytes_per_run_minus_client_buffers": round(
            (after["used_minus_clients"] - before["used_minus_clients"]) / runs, 1
        ),
        "arq_before": arq_before,
        "arq_after": arq_after,
        "one_run": breakdown,
    }
    result.metrics = [
        Metric(
            f"Redis memory per sleeping run ({runs} runs, empty payload)",
            "B",
            per_run,
            per_job,
            "raw arq job deferred 1 h",
            Target("<=", 2048),
        )
    ]
    return result
