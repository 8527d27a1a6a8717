"""The dashboard's pages with 100,000 runs in Redis: each page's latency as a logged-in browser gets
it (``stepq api`` in its own process, outside dev mode, on loopback), HTML rendered included.

The fill is ``bench.queries``' (five functions, 100,000 events through the real ingest, most runs
ended for real). Then one operator logs in with the dashboard token and each page is fetched
``REPEATS`` times after a warm-up. Target: every page under 100 ms (p99).
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from bench.common import BenchError, BenchResult, Env, Metric, Target, percentile
from bench.queries import _fill, landmarks, start_api

NAME = "dashboard"
TOKEN = "bench-dashboard-token-" + "ef" * 16
REPEATS = 60


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
        window, some_run, some_event = landmarks(filled)
        params = window.to_params()
        url = await start_api(env, server, {"STEPQ_DASHBOARD_TOKEN": TOKEN})
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
