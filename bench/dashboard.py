"""The dashboard's pages with 100,000 runs in Redis: each page's latency as a logged-in browser gets
it (``stepq api`` in its own process, outside dev mode, on loopback), HTML rendered included.

The fill is ``bench.queries``' (five functions, 100,000 events through the real ingest, most runs
ended for real). Then one operator logs in with the dashboard token and each page is fetched
``REPEATS`` times after a warm-up. Target: every page under 100 ms (p99).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import Any

import httpx

from bench.common import BenchError, BenchResult, Env, Metric, Proc, Target, free_port, percentile
from bench.queries import _fill

NAME = "dashboard"
TOKEN = "bench-dashboard-token-" + "ef" * 16
REPEATS = 60


async def _api(env: Env, server: Any) -> str:
    """``stepq api`` as deployed (its own process, outside dev mode, a dashboard token); its origin."""
    port = free_port()
    argv = [sys.executable, "-m", "stepq.workers.cli", "api", "--port", str(port), "--redis-url", server.url()]
    extra = {"STEPQ_EVENT_KEYS": "bench-key", "STEPQ_DASHBOARD_TOKEN": TOKEN}
    proc = Proc("stepq-api", argv, server.workdir / "stepq-api.log", env._env(server, extra))
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


async def _log_in(http: httpx.AsyncClient) -> None:
    form = (await http.get("/ui/login")).text
    found = re.search(r'name="csrf_token" value="([^"]+)"', form)
    if not found:
        raise BenchError("the login form has no CSRF token")
    answer = await http.post("/ui/login", data={"csrf_token": found.group(1), "token": TOKEN})
    if answer.status_code != 303:
        raise BenchError(f"login refused: {answer.status_code} {answer.text[:200]}")


async def _time(http: httpx.AsyncClient, path: str, repeats: int) -> tuple[list[float], int]:
    """Milliseconds per GET of ``path`` (after two warm-up calls), and the last page's size."""
    size = 0
    for _ in range(2):
        (await http.get(path)).raise_for_status()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        response = await http.get(path)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return times, size


async def run(env: Env) -> BenchResult:
    from redis.asyncio import Redis

    from stepq.runtime.queries import RunFilter

    result = BenchResult(NAME)
    runs = env.size(100_000, 10_000)
    repeats = env.size(REPEATS, 15)
    async with env.redis(NAME) as server:
        redis = Redis.from_url(server.url())
        try:
            await redis.config_set("maxmemory-policy", "noeviction")
            filled = await _fill(redis, runs)
        finally:
            await redis.aclose()
        span = filled["filled_ms"] - filled["began_ms"]
        window = RunFilter(since_ms=filled["began_ms"] + span * 4 // 10, until_ms=filled["began_ms"] + span // 2)
        params = window.to_params()
        some_run = filled["run_ids"][len(filled["run_ids"]) // 3]
        some_event = filled["event_ids"][len(filled["event_ids"]) // 2]
        url = await _api(env, server)
        pages = {
            "runs": "/ui/runs",
            "runs table (live refresh)": "/ui/runs/table",
            "runs, by function": "/ui/runs?function=f0",
            "runs, status=failed": "/ui/runs?status=failed",
            "runs, function+status": "/ui/runs?function=f3&status=failed",
            "runs, time range": f"/ui/runs?since={params['since']}&until={params['until']}",
            "runs, event name": "/ui/runs?event=bq/e4",
            "search by run id": f"/ui/runs?q={some_run}",
            "search by event id": f"/ui/runs?q={some_event}",
            "a run": f"/ui/runs/{some_run}",
            "functions": "/ui/functions",
            "events": "/ui/events",
            "events, by name": "/ui/events?name=bq/e2",
            "bulk preview, status=failed": "/ui/bulk?preview=1&action=replay&status=failed",
            "bulk preview, function+time range": (
                f"/ui/bulk?preview=1&action=cancel&function=f1&since={params['since']}&until={params['until']}"
            ),
        }
        timings: dict[str, dict[str, Any]] = {}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await _log_in(http)
            for label, path in pages.items():
                times, size = await _time(http, path, repeats)
                timings[label] = {
                    "p50_ms": round(percentile(times, 50), 2),
                    "p99_ms": round(percentile(times, 99), 2),
                    "bytes": size,
                }
    result.details = {"runs": runs, "repeats": repeats, "fill_seconds": filled["fill_s"], "pages": timings}
    for label, t in timings.items():
        result.metrics.append(
            Metric(
                f"page {label} p99 ({runs:,} runs)",
                "ms",
                t["p99_ms"],
                target=Target("<=", 100),
                note=f"p50 {t['p50_ms']} ms, {t['bytes']:,} bytes of HTML",
            )
        )
    return result
