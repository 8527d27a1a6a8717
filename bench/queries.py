"""The dashboard's read model with 100,000 runs in Redis: each query's latency through the HTTP API
on loopback, and the memory the run indexes add per run.

Fill: five functions registered as an app would; 100,000 events sent through stepq's ingest (the
real ingest script: events stored with their outcomes, one run each created by create_run.lua, so
every index is the real one), 500 per call, so runs come in ties of one millisecond. Then real ends:
40 % of the runs are loaded (load_run.lua, which makes them running) and finished completed, 10 %
failed (apply_plan.lua), 10 % cancelled (cancel_run.lua), 10 % left running, 30 % stay queued.
No worker runs: what is measured is the read path alone. Each query is timed twice, ``REPEATS``
times after a warm-up: as a Python call of the query function (its own cost: Redis round trips and
decoding), and through ``stepq api`` (its own process, outside dev mode, with the signing key) from
an httpx client over loopback. Target: every query under 100 ms (p99 over HTTP).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx

from bench.common import BenchError, BenchResult, Env, Metric, Proc, Target, percentile

if TYPE_CHECKING:  # stepq is imported when a benchmark runs (bench/run.py --source picks which)
    from stepq.runtime.queries import RunFilter

NAME = "queries"
APP = "bq"
#: Function -> (event name, share of the runs).
FUNCTIONS = {
    "f0": ("bq/e0", 0.5),
    "f1": ("bq/e1", 0.2),
    "f2": ("bq/e2", 0.15),
    "f3": ("bq/e3", 0.1),
    "f4": ("bq/e4", 0.05),
}
SIGNING_KEY = "signkey-bench-" + "cd" * 32
BATCH = 500
REPEATS = 60
#: Index keys (beside the run records) whose memory is counted as the indexes'.
INDEX_PATTERNS = ("stepq:{*}:runs:*",)
EVENT_INDEX_PATTERNS = ("stepq:events:name:*", "stepq:outcomes:*")


def _config(fn_id: str, event: str) -> dict[str, Any]:
    return {
        "id": f"{APP}-{fn_id}",
        "fn_id": fn_id,
        "app_id": APP,
        "name": fn_id,
        "triggers": [{"event": event}],
        "retries": 3,
        "cancel": [],
        "timeouts": {},
        "flow": {"concurrency": [{"limit": 10}]} if fn_id == "f1" else {},
    }


async def _fill(redis: Any, runs: int) -> dict[str, Any]:
    """Register the functions, send ``runs`` events (one run each), and end most runs for real."""
    import random

    from stepq.event import Event
    from stepq.runtime import keys
    from stepq.runtime.decide import finish
    from stepq.runtime.ingest import Ingest
    from stepq.runtime.jobs import JobSpec
    from stepq.runtime.plan import Finish
    from stepq.runtime.registry import Registry
    from stepq.runtime.run_status import RunStatus
    from stepq.runtime.store import LoadedRun, RunStore

    await Registry(redis).register_app(APP, [_config(f, e) for f, (e, _) in FUNCTIONS.items()])
    store = RunStore(redis)
    ingest = Ingest(redis, store, Registry(redis, store.scripts))
    rng = random.Random(12)
    names = [e for e, _ in FUNCTIONS.values()]
    weights = [w for _, w in FUNCTIONS.values()]
    began = time.time()
    event_ids: list[str] = []
    for start in range(0, runs, BATCH):
        batch = [
            Event(name=rng.choices(names, weights)[0], data={"i": i}) for i in range(start, min(runs, start + BATCH))
        ]
        event_ids += await ingest.send(batch)
    filled = time.time()
    ids = [r.decode() for r in await redis.zrange(keys.runs_by_status(0, "queued"), 0, -1)]
    rng.shuffle(ids)
    n = len(ids)
    plan = {
        "completed": ids[: n * 40 // 100],
        "failed": ids[n * 40 // 100 : n * 50 // 100],
        "cancelled": ids[n * 50 // 100 : n * 60 // 100],
        "running": ids[n * 60 // 100 : n * 70 // 100],
    }
    gate = asyncio.Semaphore(64)

    async def end(run_id: str, status: str) -> None:
        async with gate:
            if status == "cancelled":
                await store.cancel(run_id, "bench")
                return
            loaded = await store.load(JobSpec(run_id, 0))
            if status == "running" or not isinstance(loaded, LoadedRun):
                return
            end = Finish(RunStatus.COMPLETED, output={"ok": 1}) if status == "completed" else None
            end = end or Finish(RunStatus.FAILED, error={"name": "Error", "message": "bench", "stack": ""})
            await store.apply(finish(loaded, end, int(time.time() * 1000)))

    await asyncio.gather(*(end(run_id, status) for status, chosen in plan.items() for run_id in chosen))
    return {
        "fill_s": round(filled - began, 1),
        "ends_s": round(time.time() - filled, 1),
        "began_ms": int(began * 1000),
        "filled_ms": int(filled * 1000),
        "event_ids": event_ids,
        "run_ids": ids,
    }


async def _memory_of(redis: Any, patterns: tuple[str, ...]) -> int:
    total = 0
    for pattern in patterns:
        async for key in redis.scan_iter(match=pattern, count=1000):
            total += int(await redis.memory_usage(key, samples=0) or 0)
    return total


async def _time(http: httpx.AsyncClient, path: str, repeats: int) -> tuple[list[float], Any]:
    """Milliseconds per GET of ``path`` (after two warm-up calls), and the last answer's JSON."""
    body: Any = None
    for _ in range(2):
        response = await http.get(path)
        response.raise_for_status()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        response = await http.get(path)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        body = response.json()
    return times, body


async def start_api(env: Env, server: Any, extra: dict[str, str]) -> str:
    """``stepq api`` in its own process (as deployed, outside dev mode, with ``extra`` settings: a
    signing key, a dashboard token); its origin once it answers."""
    import sys

    from bench.common import free_port

    port = free_port()
    argv = [sys.executable, "-m", "stepq.workers.cli", "api", "--port", str(port), "--redis-url", server.url()]
    proc = Proc(
        "stepq-api",
        argv,
        server.workdir / "stepq-api.log",
        env._env(server, {"STEPQ_EVENT_KEYS": "bench-key", **extra}),
    )
    env.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not proc.alive():
                raise BenchError(f"stepq api did not start: {proc.log_tail()}")
            await asyncio.sleep(0.05)


def landmarks(filled: dict[str, Any]) -> tuple[RunFilter, str, str]:
    """What the reads look for in a fill: a time range over a tenth of its runs, a run id and an
    event id from its middle."""
    from stepq.runtime.queries import RunFilter

    span = filled["filled_ms"] - filled["began_ms"]
    window = RunFilter(since_ms=filled["began_ms"] + span * 4 // 10, until_ms=filled["began_ms"] + span // 2)
    return (
        window,
        filled["run_ids"][len(filled["run_ids"]) // 3],
        filled["event_ids"][len(filled["event_ids"]) // 2],
    )


async def _direct(redis: Any, calls: dict[str, Callable[[], Awaitable[Any]]], repeats: int) -> dict[str, Any]:
    """The same reads as Python calls on one connection (no HTTP, no JSON): the query's own cost."""
    out = {}
    for label, call in calls.items():
        await call()
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            await call()
            times.append((time.perf_counter() - began) * 1000)
        out[label] = {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}
    return out


async def run(env: Env) -> BenchResult:
    from redis.asyncio import Redis

    from stepq.runtime.event_queries import get_event, recent_events
    from stepq.runtime.function_summaries import function_summaries
    from stepq.runtime.queries import RunFilter, find_runs, get_run, search_runs
    from stepq.runtime.run_status import RunStatus
    from stepq.signing import bearer

    result = BenchResult(NAME)
    runs = env.size(100_000, 10_000)
    repeats = env.size(REPEATS, 15)
    async with env.redis(NAME) as server:
        redis = Redis.from_url(server.url())
        try:
            await redis.config_set("maxmemory-policy", "noeviction")
            before = int((await redis.info("memory"))["used_memory"])
            filled = await _fill(redis, runs)
            after = int((await redis.info("memory"))["used_memory"])
            index_bytes = await _memory_of(redis, INDEX_PATTERNS)
            event_index_bytes = await _memory_of(redis, EVENT_INDEX_PATTERNS)
            window, some_run, some_event = landmarks(filled)
            params = window.to_params()
            cursor = None
            for _ in range(20):  # the 21st page
                cursor = (await find_runs(redis, RunFilter(), cursor=cursor)).cursor
            direct = await _direct(
                redis,
                {
                    "runs, no filter": lambda: find_runs(redis, RunFilter()),
                    "runs, by function": lambda: find_runs(redis, RunFilter(function="f0")),
                    "runs, status=failed": lambda: find_runs(redis, RunFilter(status=RunStatus.FAILED)),
                    "runs, function+status": lambda: find_runs(
                        redis, RunFilter(function="f3", status=RunStatus.FAILED)
                    ),
                    "runs, time range": lambda: find_runs(redis, window),
                    "runs, event name": lambda: find_runs(redis, RunFilter(event_name="bq/e4")),
                    "runs, 21st page": lambda: find_runs(redis, RunFilter(), cursor=cursor),
                    "runs, function+event (no match: scan bound)": lambda: find_runs(
                        redis, RunFilter(function="f2", event_name="bq/e0")
                    ),
                    "a run": lambda: get_run(redis, some_run),
                    "search by run id": lambda: search_runs(redis, some_run),
                    "search by event id": lambda: search_runs(redis, some_event),
                    "functions": lambda: function_summaries(redis),
                    "events": lambda: recent_events(redis),
                    "events, by name": lambda: recent_events(redis, name="bq/e2"),
                    "an event": lambda: get_event(redis, some_event),
                },
                repeats,
            )
            url = await start_api(env, server, {"STEPQ_SIGNING_KEY": SIGNING_KEY})
            async with httpx.AsyncClient(base_url=url, headers={"authorization": bearer(SIGNING_KEY)}) as http:
                queries = {
                    "runs, no filter": "/v0/runs",
                    "runs, by function": "/v0/runs?function=f0",
                    "runs, status=failed": "/v0/runs?status=failed",
                    "runs, function+status": "/v0/runs?function=f3&status=failed",
                    "runs, time range": f"/v0/runs?since={params['since']}&until={params['until']}",
                    "runs, event name": "/v0/runs?event=bq/e4",
                    "runs, 21st page": f"/v0/runs?cursor={cursor}",
                    "runs, function+event (no match: scan bound)": "/v0/runs?function=f2&event=bq/e0",
                    "a run": f"/v0/runs/{some_run}",
                    "search by run id": f"/v0/runs?q={some_run}",
                    "search by event id": f"/v0/runs?q={some_event}",
                    "functions": "/v0/functions",
                    "events": "/v0/events",
                    "events, by name": "/v0/events?name=bq/e2",
                    "an event": f"/v0/events/{some_event}",
                }
                timings: dict[str, dict[str, Any]] = {}
                for label, path in queries.items():
                    times, body = await _time(http, path, repeats)
                    listed = body.get("runs", body.get("events", body.get("functions")))
                    timings[label] = {
                        "p50_ms": round(percentile(times, 50), 2),
                        "p99_ms": round(percentile(times, 99), 2),
                        "direct_p50_ms": direct[label]["p50_ms"],
                        "direct_p99_ms": direct[label]["p99_ms"],
                        "items": len(listed) if isinstance(listed, list) else 1,
                        "truncated": body.get("truncated"),
                    }
        finally:
            await redis.aclose()
    result.details = {
        "runs": runs,
        "repeats": repeats,
        "fill_seconds": filled["fill_s"],
        "ends_seconds": filled["ends_s"],
        "used_memory_growth_per_run": round((after - before) / runs, 1),
        "run_index_bytes_per_run": round(index_bytes / runs, 1),
        "event_index_bytes_per_event": round(event_index_bytes / len(filled["event_ids"]), 1),
        "queries": timings,
    }
    for label, t in timings.items():
        note = f"p50 {t['p50_ms']} ms; the query alone (no HTTP): p50 {t['direct_p50_ms']}, p99 {t['direct_p99_ms']} ms"
        result.metrics.append(
            Metric(f"GET {label} p99 ({runs:,} runs)", "ms", t["p99_ms"], target=Target("<=", 100), note=note)
        )
    result.metrics.append(Metric("run indexes' memory per run", "B", index_bytes / runs))
    result.metrics.append(Metric("events' outcomes and name index per event", "B", event_index_bytes / runs))
    return result
