"""Tracing's cost: steps/s of 1 worker draining runs of 10 no-op steps, in three interleaved cases.

- ``base``: a worker running stepq as committed at ``STEPQ_BENCH_TRACING_BASE`` (default: the
  commit before the one that added workers/tracing.py), exported with ``git archive`` into a
  ``stepq`` package put first on the worker's ``PYTHONPATH``: the code before tracing existed.
- ``off``: the working tree, tracing not asked for (no ``OTEL_*``/``STEPQ_TRACING`` settings): must
  be as fast as ``base``.
- ``on``: the working tree exporting every span by OTLP/HTTP (``OTEL_EXPORTER_OTLP_ENDPOINT``) to a
  loopback sink in this process that answers 200 to each export: a span per attempt, one per run,
  batched (``BatchSpanProcessor``) and serialized as a collector would receive them.

The runs are the same for every case (created by the working tree's ``Client.send``, with no
sender span); the cases take turns within each round, as in ``throughput``.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

from bench.common import (
    REPO_ROOT,
    BenchError,
    BenchResult,
    Clients,
    Env,
    Metric,
    RedisServer,
    clients,
    median,
    stepq_queue,
)
from bench.revisions import export_package
from bench.throughput import STAGING, STEPS, _drain, _register, _total

NAME = "tracing"


def base_revision() -> str:
    """``STEPQ_BENCH_TRACING_BASE``, else the parent of the commit that added workers/tracing.py."""
    chosen = os.environ.get("STEPQ_BENCH_TRACING_BASE")
    if chosen:
        return chosen
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "workers/tracing.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not added:
        raise BenchError("no commit adds workers/tracing.py: set STEPQ_BENCH_TRACING_BASE to a revision to compare")
    return f"{added[-1]}^"


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that keeps nothing: reads the export, answers 200 (an empty response)."""

    exports = 0
    bytes = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).exports += 1
        type(self).bytes += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def drain(env: Env, server: RedisServer, c: Clients, steps: int, worker_env: dict[str, str]) -> dict[str, Any]:
    from stepq.runtime import keys

    runs = steps // STEPS
    await c.redis.delete(STAGING, keys.runs_done(0), keys.runs_active(0))
    await _register(c)
    for start in range(0, runs, 250):
        await c.send("bench/steps", [{"n": STEPS}] * min(250, runs - start))
    await c.redis.rename(stepq_queue(), STAGING)
    workers = await env.stepq_workers(server, 1, env=worker_env)
    try:
        stats = await _drain(c, stepq_queue(), workers, runs * STEPS, timeout=60 + runs * STEPS / 50)
    finally:
        for w in workers:
            w.stop()
    done = int(await c.redis.zcard(keys.runs_done(0)))
    if done != runs:
        raise BenchError(f"a drain ended with {done} runs done of {runs}")
    return stats


async def run(env: Env) -> BenchResult:
    result = BenchResult(NAME)
    runs = env.size(1000, 100)
    n_rounds = env.size(6, 2)
    per_round = runs // n_rounds * STEPS
    revision = base_revision()
    base = export_package(revision, env.workdir / "tracing-base")
    pythonpath = os.pathsep.join([str(base), str(REPO_ROOT)])
    with otlp_sink() as endpoint:
        cases = {
            "base": {"PYTHONPATH": pythonpath},
            "off": {},
            "on": {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "bench"},
        }
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
        async with env.redis(NAME) as server, clients(server) as c:
            names = list(cases)
            for r in range(n_rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    rounds[name].append(await drain(env, server, c, per_round, cases[name]))
    if _Sink.exports == 0:
        raise BenchError("the traced worker exported no spans to the sink")
    totals = {name: _total(rs) for name, rs in rounds.items()}

    def ratio(case: str) -> float:
        return round(
            median(
                [
                    a["units"] / a["seconds"] / (b["units"] / b["seconds"])
                    for a, b in zip(rounds[case], rounds["base"], strict=True)
                ]
            ),
            3,
        )

    result.details = {
        "base_revision": revision,
        "runs_per_case": runs,
        "steps_per_run": STEPS,
        "rounds": n_rounds,
        "otlp_exports": _Sink.exports,
        "otlp_bytes": _Sink.bytes,
        "ratios_median_of_rounds": {"off_vs_base": ratio("off"), "on_vs_base": ratio("on")},
        **totals,
    }
    result.metrics += [
        Metric(
            "tracing off (1 worker)",
            "steps/s",
            totals["off"]["per_s"],
            totals["base"]["per_s"],
            f"{revision} (no tracing code)",
            note="must be about equal",
        ),
        Metric(
            "tracing on, OTLP to a loopback sink (1 worker)",
            "steps/s",
            totals["on"]["per_s"],
            totals["base"]["per_s"],
            f"{revision} (no tracing code)",
        ),
    ]
    return result
