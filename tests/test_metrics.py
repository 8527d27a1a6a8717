"""Prometheus metrics: a real worker (``--metrics-port``) and a real ``stepq api`` run a known
workload, and their ``/metrics`` endpoints are scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from stepq.runtime import keys, metrics
from stepq.runtime.jobs import JobSpec
from stepq.runtime.metrics_state import metric_names
from stepq.runtime.plan import Commit, Plan, Retry, Write
from stepq.runtime.queries import list_runs
from stepq.runtime.store import Outcome
from stepq.workers import metrics as worker_metrics
from tests.helpers import REDIS_URL, ROOT, STEPQ_CLI, TERMINAL
from tests.http_fixtures import Service, free_port, start_api

APP = "t-metrics"
TOKEN = "scrape-secret"
DASHBOARD = ROOT / "deploy" / "grafana" / "stepq.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, token: str | None = None) -> tuple[Samples, list[str]]:
    """The samples of a /metrics answer, keyed by (name, labels), and every label value seen."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10.0)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    values: list[str] = []
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
            values += [v for k, v in sample.labels.items() if k != "le"]
    return samples, values


def by_label(samples: Samples, name: str, **fixed: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``name`` (with the ``fixed`` labels), by their other labels."""
    out = {}
    for (sample, labels), value in samples.items():
        if sample == name and all((k, v) in labels for k, v in fixed.items()):
            out[tuple(sorted((k, v) for k, v in labels if k not in fixed))] = value
    return out


def per_function(samples: Samples, name: str, **fixed: str) -> dict[str, float]:
    return {dict(labels)["function"]: v for labels, v in by_label(samples, name, **fixed).items()}


async def wait_terminal(redis: Redis, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ended = [r for r in await list_runs(redis, limit=100) if r.status in TERMINAL]
        if len(ended) >= count:
            return
        assert time.monotonic() < deadline, f"{len(ended)} of {count} runs ended: {ended}"
        await asyncio.sleep(0.05)


def post(api: str, key: str, body: Any, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{api}/e/{key}", content=content, timeout=10.0)


def fn(name: str) -> str:
    return f"{APP}-{name}"


async def test_worker_and_api_metrics_after_a_known_workload(redis: Redis, tmp_path: Path) -> None:
    api_env = {"STEPQ_EVENT_KEYS": "k1", "STEPQ_METRICS_TOKEN": TOKEN, "STEPQ_MAX_EVENT_BYTES": "4096"}
    api = start_api(tmp_path, dev=False, env=api_env)
    port = free_port()
    argv = [
        *STEPQ_CLI,
        "worker",
        "tests.apps.metrics_app:client",
        "--redis-url",
        REDIS_URL,
        "--metrics-port",
        str(port),
    ]
    worker = Service("worker", argv, tmp_path)
    try:
        worker.wait_log("worker.started")
        url = str(api.url)  # type: ignore[attr-defined]
        # refused requests: a wrong key, a body that is not JSON, an event over the size limit
        assert post(url, "nope", {"name": "metrics/ok"}).status_code == 401
        assert post(url, "k1", None, raw=b"{not json").status_code == 400
        assert post(url, "k1", {"name": "metrics/ok", "data": {"pad": "x" * 5000}}).status_code == 413
        events = [
            {"name": "metrics/ok"},
            {"name": "metrics/ok"},
            {"name": "metrics/flaky"},
            {"name": "metrics/doomed"},
            {"name": "metrics/rated"},
            {"name": "metrics/rated"},  # skipped: the rate limit allows one a minute
            {"name": "metrics/throttled"},
            {"name": "metrics/throttled"},  # held: the throttle starts one a minute
        ]
        sent = post(url, "k1", events)
        assert sent.status_code == 200, sent.text
        event_ids = sent.json()["ids"]
        await wait_terminal(redis, 7)  # all but the held one
        worker.wait_log("invocation")
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        started = {fn("ok"): 6, fn("flaky"): 3, fn("doomed"): 2, fn("rated"): 2, fn("throttled"): 2}
        # the counters move just after a run's state does (an invocation's, after its run's end):
        # wait for the last of them
        deadline = time.monotonic() + 10
        while True:
            w, w_values = scrape(metrics_url)
            ended = sum(per_function(w, "stepq_function_runs_ended_total").values())
            timed = sum(per_function(w, "stepq_step_duration_seconds_count").values())
            if (ended >= 7 and timed >= sum(started.values())) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)

        assert per_function(w, "stepq_steps_started_total") == started
        assert per_function(w, "stepq_step_duration_seconds_count") == started
        assert per_function(w, "stepq_steps_completed_total") == {
            fn("ok"): 4, fn("flaky"): 1, fn("rated"): 1, fn("throttled"): 1,
        }  # fmt: skip
        assert per_function(w, "stepq_steps_failed_total") == {fn("doomed"): 1}
        assert by_label(w, "stepq_step_retries_total") == {(("function", fn("flaky")), ("kind", "step")): 1}
        assert by_label(w, "stepq_function_runs_ended_total") == {
            (("function", fn("ok")), ("status", "completed")): 2,
            (("function", fn("flaky")), ("status", "completed")): 1,
            (("function", fn("doomed")), ("status", "failed")): 1,
            (("function", fn("rated")), ("status", "completed")): 1,
            (("function", fn("throttled")), ("status", "completed")): 1,
        }
        assert by_label(w, "stepq_duplicate_executions_total") == {}
        assert by_label(w, "stepq_leases_lost_total") == {}
        # every invocation applied its plan in one script call, timed
        rtt = by_label(w, "stepq_redis_roundtrip_seconds_count")
        assert rtt[(("script", "apply_plan"),)] == sum(started.values())
        assert rtt[(("script", "claim_jobs"),)] >= 1
        buckets = by_label(w, "stepq_step_duration_seconds_bucket", function=fn("ok"))
        assert buckets[(("le", "+Inf"),)] == 6

        # jobs nobody runs: stop the worker, then start three more runs
        worker.stop()
        before = time.time()
        assert post(url, "k1", [{"name": "metrics/ok"}] * 3).status_code == 200
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        await asyncio.sleep(0.2)
        a, a_values = scrape(f"{url}/metrics", TOKEN)
        assert a[("stepq_events_received_total", frozenset())] == len(events) + 3
        assert by_label(a, "stepq_event_requests_refused_total") == {
            (("status", "400"),): 1, (("status", "401"),): 1, (("status", "413"),): 1,
        }  # fmt: skip
        assert by_label(a, "stepq_flow_control_skipped_total") == {
            (("function", fn("rated")), ("reason", "rate_limit")): 1
        }
        assert by_label(a, "stepq_runs") == {
            (("function", fn("ok")), ("status", "completed")): 2,
            (("function", fn("ok")), ("status", "queued")): 3,
            (("function", fn("flaky")), ("status", "completed")): 1,
            (("function", fn("doomed")), ("status", "failed")): 1,
            (("function", fn("rated")), ("status", "completed")): 1,
            (("function", fn("rated")), ("status", "skipped")): 1,
            (("function", fn("throttled")), ("status", "completed")): 1,
            (("function", fn("throttled")), ("status", "queued")): 1,
        }
        assert by_label(a, "stepq_flow_control_waiting_runs") == {
            (("function", fn("throttled")), ("kind", "throttle")): 1
        }
        # the three new jobs are due, the held start is not
        assert by_label(a, "stepq_queue_depth") == {(("queue", APP),): 3, (("queue", keys.HTTP_QUEUE_ID),): 0}
        age = by_label(a, "stepq_queue_oldest_age_seconds")[(("queue", APP),)]
        assert 0.1 <= age <= time.time() - before + 1
        assert a[("stepq_state_read_ok", frozenset())] == 1

        # bounded labels: no run id or event id anywhere
        run_ids = {r.run_id for r in await list_runs(redis, limit=100)}
        assert len(run_ids) == 11
        leaked = (set(w_values) | set(a_values)) & (run_ids | set(event_ids))
        assert not leaked, f"ids used as label values: {leaked}"
    finally:
        worker.stop()
        api.stop()


def test_dashboard_names_only_exported_metrics() -> None:
    """Every metric a panel of the Grafana dashboard queries is one stepq exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    exprs += [v.get("definition", "") for v in dashboard["templating"]["list"]]
    used = {name for expr in exprs for name in re.findall(r"\b(stepq_[a-z_]+)", expr)}
    assert used, exprs
    missing = used - metric_names()
    assert not missing, f"the dashboard queries metrics stepq does not export: {missing}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "fail", "duration", "queue depth", "runs by status", "flow", "event", "redis"):
        assert topic in titles, f"no panel about {topic}"


def test_refused_writes_are_counted_by_reason() -> None:
    """The outcomes the workload above cannot provoke on demand: each refusal of an invocation's
    write lands in its own series (duplicate executions apart from writes to ended runs)."""
    metrics.enable()
    slug = "t-metrics-outcomes"
    job = JobSpec("01M8NYTNJG0000000000000000", 0)
    commit = Commit("k", "step", {"data": 1}, 1, 1, JobSpec(job.run_id, 1))
    retry = Retry(job, 0, "", "", 1, "boom", executed=False)

    def plan(write: Write) -> Plan:
        return Plan(job.run_id, "q", "f", "1", 0, write, 0)

    for outcome in (Outcome.DUPLICATE, Outcome.STALE, Outcome.FENCED, Outcome.FENCED, Outcome.DONE, Outcome.OK):
        worker_metrics.invocation_ended(slug, plan(commit), outcome, 0.005)
    worker_metrics.invocation_ended(slug, plan(retry), Outcome.OK, 0.5)
    worker_metrics.invocation_ended(slug, plan(commit), Outcome.STATE_TOO_LARGE, 0.005)
    assert {k: v for k, v in metrics.DUPLICATE_EXECUTIONS.values.items() if k[0] == slug} == {
        (slug, "duplicate"): 1,
        (slug, "stale"): 1,
        (slug, "fenced"): 2,
    }
    assert metrics.WRITES_REFUSED.get(slug, "done") == 1
    assert metrics.STEPS_COMPLETED.get(slug) == 1
    assert metrics.STEP_RETRIES.get(slug, "function") == 1
    assert metrics.STEPS_FAILED.get(slug) == 1
    [family] = [f for f in metrics.REGISTRY.collect() if f.name == "stepq_step_duration_seconds"]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples if s.labels["function"] == slug}
    assert samples[("stepq_step_duration_seconds_count", None)] == 8
    assert samples[("stepq_step_duration_seconds_bucket", "0.005")] == 7  # le is inclusive: 0.005 counts in le="0.005"
    assert samples[("stepq_step_duration_seconds_bucket", "0.5")] == 8
    assert samples[("stepq_step_duration_seconds_sum", None)] == pytest.approx(7 * 0.005 + 0.5)
