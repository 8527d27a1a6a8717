"""OpenTelemetry traces (stepq.workers.tracing, stepq.tracing).

The workers are separate processes, so they write their spans to a file (``STEPQ_TRACING_FILE``, one
JSON line per span, as ``ReadableSpan.to_json`` puts it); the sender's spans are the test's own,
kept by the SDK's ``InMemorySpanExporter``.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

import stepq
from stepq.replay import ExecutionRequest
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.app_urls import AppUrlPolicy
from stepq.workers.http_invoker import HttpInvoker
from stepq.workers.remote import RemoteFunction
from tests.helpers import REDIS_URL, ROOT, StartWorkers, invocations, run_ids_for_event, wait_for_run


@pytest.fixture
def sender_tracer() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """A tracer of the test's own (not the global provider: other tests share this process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def spans_named(path: Path, names: set[str], timeout: float = 10.0) -> list[dict[str, Any]]:
    """The spans in the file, once some span of each of ``names`` is there."""
    deadline = time.monotonic() + timeout
    while True:
        spans = read_spans(path)
        if names <= {s["name"] for s in spans}:
            return spans
        assert time.monotonic() < deadline, f"spans {names - {s['name'] for s in spans}} not written: {spans}"
        await asyncio.sleep(0.05)


def ids(span: dict[str, Any]) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) as 32/16 hex digits."""
    context = span["context"]
    parent = span["parent_id"]
    return context["trace_id"][2:], context["span_id"][2:], parent[2:] if parent else None


def one(spans: list[dict[str, Any]], name: str, **attributes: Any) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"{len(found)} spans named {name} {attributes}: {[s['name'] for s in spans]}"
    return found[0]


def events(span: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e["attributes"] for e in span["events"] if e["name"] == name]


async def test_a_run_is_one_trace_from_the_sender_through_retries_sleeps_parallel_steps_waits_and_invokes(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, sender_tracer: Any
) -> None:
    path = tmp_path / "spans.jsonl"
    workers = start_workers("traced", n=2, env={"STEPQ_TRACING_FILE": str(path)})
    tracer, exporter = sender_tracer
    with tracer.start_as_current_span("checkout"):
        [event_id] = await sender.send(stepq.Event(name="test/traced", data={"id": 7}))
    [sent] = exporter.get_finished_spans()
    trace_id, sender_span = f"{sent.context.trace_id:032x}", f"{sent.context.span_id:016x}"
    [run_id] = await run_ids_for_event(redis, "traced", event_id)
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view
    spans = await spans_named(path, {"run t-traced-traced", "run t-traced-traced-child"})

    # one trace, the sender's, for the run and the run it invoked
    assert {ids(s)[0] for s in spans} == {trace_id}
    run = one(spans, "run t-traced-traced")
    _, run_span, parent = ids(run)
    assert parent == sender_span and run["status"]["status_code"] == "OK"
    assert run["attributes"]["stepq.run_id"] == run_id

    # the step's failed attempt (its error recorded, its retry scheduled), then its attempt that worked
    failed = one(spans, "step flaky", **{"stepq.attempt": 0})
    assert failed["status"]["status_code"] == "ERROR" and ids(failed)[2] == run_span
    [exception] = events(failed, "exception")
    assert exception["exception.type"] == "ConnectionError" and exception["exception.message"] == "upstream down"
    assert "Traceback" in exception["exception.stacktrace"] or exception["exception.stacktrace"]
    assert len(events(failed, "retry scheduled")) == 1
    retried = one(spans, "step flaky", **{"stepq.attempt": 1})
    assert retried["status"]["status_code"] == "OK" and retried["attributes"]["stepq.outcome"] == "step-ok"

    attempts = [s for s in spans if s["attributes"].get("stepq.run_id") == run_id and s is not run]
    assert all(ids(s)[2] == run_span for s in attempts), [(s["name"], ids(s)) for s in attempts]
    planned = [e for s in attempts for e in s["events"]]
    [sleep] = [e["attributes"] for e in planned if e["name"] == "sleep"]
    assert sleep["stepq.step"] == "nap" and sleep["stepq.sleep.until"].endswith("+00:00")
    assert {e["attributes"]["stepq.step"] for e in planned if e["name"] == "step planned"} == {"left", "right"}
    [wait] = [e["attributes"] for e in planned if e["name"] == "wait for event"]
    assert wait["stepq.wait.event"] == "test/traced.approval" and "async.data.id" in wait["stepq.wait.if"]
    timer = one(spans, "timer", **{"stepq.run_id": run_id})
    assert events(timer, "timed out (or sleep ended)") == [{}]

    # the parallel steps, each its own attempt span; the app's span nests in the step that made it
    left, right = one(spans, "step left"), one(spans, "step right")
    assert ids(left)[2] == ids(right)[2] == run_span
    assert ids(one(spans, "app-work"))[2] == ids(left)[1]

    # the invoke: the child run's root is a child of the invoke step's span
    invoke = one(spans, "invoke t-traced-traced-child")
    assert ids(invoke)[2] == run_span
    child = one(spans, "run t-traced-traced-child")
    assert (
        ids(child)[2] == ids(invoke)[1]
        and child["attributes"]["stepq.run_id"] == invoke["attributes"]["stepq.invoke.run_id"]
    )
    assert ids(one(spans, "step triple"))[2] == ids(child)[1]

    # the invocation log lines carry the trace and the span of their attempt
    lines = [line for w in workers for line in invocations(w.logs(), run_id)]
    assert lines and all(line["trace_id"] == trace_id for line in lines)
    assert {line["span_id"] for line in lines} <= {ids(s)[1] for s in attempts}
    # ... and so do the app's own lines, logged while a step runs
    [logged] = [line for w in workers for line in w.logs() if line.get("event") == "app.left"]
    assert (logged["trace_id"], logged["span_id"]) == (trace_id, ids(left)[1])


APPROVER = """
import asyncio, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
import stepq
from stepq.workers.tracing import JsonLinesExporter

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(sys.argv[1])))
trace.set_tracer_provider(provider)  # an app that traces: the waits its events resolve make spans


async def main() -> None:
    client = stepq.Client("t-approver", redis_url=sys.argv[2])
    print((await client.send(stepq.Event(name="test/traced.approval", data={"id": 9})))[0])
    await client.aclose()

asyncio.run(main())
"""


async def test_the_event_api_continues_the_traceparent_header_and_a_matched_wait_is_a_span(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path, sender_tracer: Any
) -> None:
    path = tmp_path / "spans.jsonl"
    start_workers("traced", env={"STEPQ_TRACING_FILE": str(path)})
    [waiting] = await sender.send(stepq.Event(name="test/traced.wait", data={"id": 9}))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tracer, _ = sender_tracer
    with ApiServer(REDIS_URL, settings=ApiSettings.from_env(dev=True)) as api:
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{api.url}/e/key",
                json={"name": "test/traced.child", "data": {"n": 1}, "id": "by-header"},
                headers={"traceparent": traceparent},
            )
            assert answer.status_code == 200, answer.text
            bad = await http.post(
                f"{api.url}/e/key",
                json={"name": "test/traced.child", "data": {"n": 2}, "id": "bad-header"},
                headers={"traceparent": "00-zz-nonsense"},
            )
            assert bad.status_code == 200, bad.text  # an invalid header is ignored, not refused
        # the SDK's HTTP transport sends the current span as the same header
        client = stepq.Client("t-http-sender", event_api_url=api.url, event_key="key")
        with tracer.start_as_current_span("http-send") as current:
            [by_client] = await client.send(stepq.Event(name="test/traced.child", data={"n": 3}, id="by-client"))
        await client.aclose()
    for event_id in (answer.json()["ids"][0], bad.json()["ids"][0], by_client):
        [run_id] = await run_ids_for_event(redis, "traced-child", event_id)
        await wait_for_run(redis, run_id)
    spans = await spans_named(path, {"run t-traced-traced-child"})
    deadline = time.monotonic() + 10
    while len([s for s in spans if s["name"] == "run t-traced-traced-child"]) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        spans = read_spans(path)
    roots = {ids(s)[0]: s for s in spans if s["name"] == "run t-traced-traced-child"}
    assert len(roots) == 3, roots
    assert ids(roots["0af7651916cd43dd8448eb211c80319c"])[2] == "b7ad6b7169203331"
    sent = current.get_span_context()
    assert ids(roots[f"{sent.trace_id:032x}"])[2] == f"{sent.span_id:016x}"
    # the run sent with a bad header starts a trace of its own: its root has no parent
    assert [ids(s)[2] for s in roots.values()].count(None) == 1
    for trace_id, root in roots.items():  # and every span of a run is in its root's trace
        run_id = root["attributes"]["stepq.run_id"]
        assert {ids(s)[0] for s in spans if s["attributes"].get("stepq.run_id") == run_id} == {trace_id}

    # an event that resolves a wait, sent by an app that traces: a span under the waiting run's root
    [wait_run] = await run_ids_for_event(redis, "traced-wait", waiting)
    await wait_for_run(redis, wait_run, statuses=("waiting",))
    approver = subprocess.run(
        [sys.executable, "-c", APPROVER, str(path), REDIS_URL], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert approver.returncode == 0, approver.stderr
    assert (await wait_for_run(redis, wait_run)).status == "completed"
    spans = await spans_named(path, {"wait matched", "run t-traced-traced-wait"})
    matched, root = one(spans, "wait matched"), one(spans, "run t-traced-traced-wait")
    assert ids(matched)[:1] + ids(matched)[2:] == (ids(root)[0], ids(root)[1])
    assert matched["attributes"]["stepq.wait.event_id"] == approver.stdout.split()[-1]
    assert matched["attributes"]["stepq.run_id"] == wait_run


def test_without_opentelemetry_or_when_turned_off_nothing_is_traced(tmp_path: Path) -> None:
    """With OpenTelemetry not importable, a worker runs as before (no spans, no trace ids in its log
    lines) and a send carries no trace context; ``STEPQ_TRACING=off`` does the same with it installed."""
    script = f"""
import sys, asyncio
if sys.argv[1] == "blocked":
    for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.sdk", "opentelemetry.sdk.trace"):
        sys.modules[name] = None  # import fails as if the extra were not installed
import stepq
from stepq.tracing import current_traceparent
from stepq.workers import tracing
from stepq.workers.cli import main
assert current_traceparent() == ""
assert not tracing.setup(None).enabled
sys.exit(main(["worker", "tests.apps.invokes:client", "--redis-url", {REDIS_URL!r}]))
"""
    path = tmp_path / "spans.jsonl"
    env = {**os.environ, "STEPQ_TRACING_FILE": str(path), "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"}
    for mode, extra in (("blocked", {}), ("off", {"STEPQ_TRACING": "off"})):
        log = tmp_path / f"{mode}.stderr"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", script, mode],
                cwd=ROOT,
                env={**env, **extra},
                stderr=err,
                stdout=subprocess.DEVNULL,
            )
        try:
            asyncio.run(_one_invoke_run(log))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        calls = [line for line in lines if line.get("event") == "invocation"]
        assert calls and not any("trace_id" in line for line in lines), (mode, lines)
        assert not path.exists(), mode


async def _one_invoke_run(log: Path) -> None:
    from stepq.runtime.connection import connect

    redis = connect(REDIS_URL)
    await redis.flushdb()
    deadline = time.monotonic() + 20
    while "worker.started" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.05)
    client = stepq.Client("t-off-sender", redis_url=REDIS_URL)
    [event_id] = await client.send(stepq.Event(name="test/invoke.parent", data={"mode": "ok"}))
    [run_id] = await run_ids_for_event(redis, "parent", event_id)
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view
    await client.aclose()
    await redis.aclose()


async def test_the_http_worker_passes_the_attempts_span_to_the_served_app(sender_tracer: Any) -> None:
    """A function served over HTTP gets the current span (the attempt's, in a tracing worker) as a
    ``traceparent`` header, so the app's own instrumentation continues the run's trace."""
    seen: list[str | None] = []

    class App(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append(self.headers.get("traceparent"))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fn = RemoteFunction("app-fn", "app", "fn", "fn", f"http://127.0.0.1:{server.server_address[1]}/api/inngest")
    event = stepq.Event(name="test/http", data={}, id="e", ts=1)
    request = ExecutionRequest(event=event, events=[event], steps={}, run_id="r")
    invoker = HttpInvoker(timeout_s=5, url_policy=AppUrlPolicy(redis_url=REDIS_URL))
    tracer, _ = sender_tracer
    try:
        await invoker.invoke(fn, request)  # no span: no header
        with tracer.start_as_current_span("attempt") as span:
            await invoker.invoke(fn, request)
    finally:
        await invoker.aclose()
        server.shutdown()
        server.server_close()
    context = span.get_span_context()
    assert seen == [None, f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"]
