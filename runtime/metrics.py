"""Prometheus metrics: what every stepq process counts (the API adds, from ``metrics_state``, what it reads from Redis).

Two kinds:

- *Counters and histograms* a process keeps as it works (``REGISTRY``): a worker counts the steps it
  runs, retries, refused writes, lost leases and its Redis round trips (``stepq.workers.metrics``
  classifies a job's outcome); the API counts the events it receives and refuses; whichever process
  ends a run or skips a start counts that. Each process exposes its own; Prometheus sums them.
- *Gauges of the whole deployment* (runs by status, queue depth and age, flow-control waits), read
  from Redis when scraped by ``stepq.runtime.metrics_state``, served by the API only: every worker
  reading the same keys would multiply the cost and the series.

Nothing is counted until ``enable()`` (the API's app and a worker given ``--metrics-port`` call
it), so a worker without metrics pays one flag check per hook. Labels are bounded: a function's
slug, a queue id, a status, an outcome or reason from a fixed list, a script name; never a run,
event or job id. The pure code (plan, decide, the SDK's engine) knows nothing of this module.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Step (invocation) durations, from a millisecond to half an hour.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
#: Redis round trips, from 50 µs (a local Redis) to a second (a Redis in trouble).
RTT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class CounterSet:
    """A counter family kept as a plain dict (label values -> count): an increment on the hot path
    is a dict update (~0.1 µs), where prometheus_client's ``Counter.labels().inc()`` takes a lock
    and validates labels (~5 µs). Read by ``collect`` at scrape time, from any thread: under the GIL
    a scrape sees each count whole, at worst one increment old."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        assert name.endswith("_total"), name
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0)

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        if not self.labels:
            family.add_metric([], self.values.get((), 0))
        for labels, value in sorted(list(self.values.items())):
            if labels:
                family.add_metric(list(labels), value)
        return family


class HistogramSet:
    """A histogram family kept as plain lists (label values -> [count per bucket..., +Inf, sum]);
    see ``CounterSet``."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.bounds) + 2)
        series[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in sorted(list(self.series.items())):
            counts = list(series)  # one copy: the buckets of a sample agree with each other
            buckets, total = [], 0.0
            for bound, count in zip((*(repr(b) for b in self.bounds), "+Inf"), counts[:-1], strict=True):
                total += count
                buckets.append((bound, total))
            family.add_metric(list(labels), buckets, counts[-1])
        return family


STEPS_STARTED = CounterSet(
    "stepq_steps_started_total",
    "Invocations a worker started: each runs a function up to its next new step (a step attempt, or a "
    "sleep, wait, fan-out or the function's return).",
    ["function"],
)
STEPS_COMPLETED = CounterSet(
    "stepq_steps_completed_total", "Step results committed (the step succeeded).", ["function"]
)
STEPS_FAILED = CounterSet(
    "stepq_steps_failed_total",
    "Steps that failed for good (attempts spent): their error is memoized for the function to handle.",
    ["function"],
)
STEP_RETRIES = CounterSet(
    "stepq_step_retries_total",
    "Failed attempts scheduled to run again; kind: step (a step raised) or function (code outside any step did).",
    ["function", "kind"],
)
STEP_DURATION = HistogramSet(
    "stepq_step_duration_seconds",
    "How long one invocation took, load to decision (the step it ran, for a step attempt).",
    ["function"],
    DURATION_BUCKETS,
)
DUPLICATE_EXECUTIONS = CounterSet(
    "stepq_duplicate_executions_total",
    "Invocations whose code ran but whose write was refused: reason duplicate (the step was committed "
    "already), stale (the run moved on) or fenced (a newer delivery holds the run).",
    ["function", "reason"],
)
WRITES_REFUSED = CounterSet(
    "stepq_writes_refused_total",
    "Invocations whose write was refused because the run ended meanwhile: reason done, cancelled or missing.",
    ["function", "reason"],
)
LEASES_LOST = CounterSet(
    "stepq_leases_lost_total",
    "Running jobs whose lease a worker found lost when renewing it (another worker may run them).",
    ["queue"],
)
RUNS_ENDED = CounterSet(
    "stepq_function_runs_ended_total",
    "Runs ended by this process, by final status (completed, failed, cancelled).",
    ["function", "status"],
)
STARTS_SKIPPED = CounterSet(
    "stepq_flow_control_skipped_total",
    "Run starts flow control turned away; reason: rate_limit, idempotency, singleton or other.",
    ["function", "reason"],
)
EVENTS_RECEIVED = CounterSet("stepq_events_received_total", "Events the HTTP API accepted and stored.")
EVENT_REQUESTS_REFUSED = CounterSet(
    "stepq_event_requests_refused_total",
    "Requests to POST /e/{key} answered with an error, by HTTP status (400, 401, 413, 503, 500).",
    ["status"],
)
REDIS_RTT = HistogramSet(
    "stepq_redis_roundtrip_seconds",
    "Round trips of this process's Lua script calls (claim_jobs, apply_plan, load_run...), by script.",
    ["script"],
    RTT_BUCKETS,
)
FAMILIES: tuple[CounterSet | HistogramSet, ...] = (
    STEPS_STARTED,
    STEPS_COMPLETED,
    STEPS_FAILED,
    STEP_RETRIES,
    STEP_DURATION,
    DUPLICATE_EXECUTIONS,
    WRITES_REFUSED,
    LEASES_LOST,
    RUNS_ENDED,
    STARTS_SKIPPED,
    EVENTS_RECEIVED,
    EVENT_REQUESTS_REFUSED,
    REDIS_RTT,
)


class _Kept(Collector):
    """The families this process keeps, as of the scrape."""

    def collect(self) -> Iterator[Metric]:
        return kept_families()


def kept_families() -> Iterator[Metric]:
    """The counters and histograms this process keeps, as of now."""
    for family in FAMILIES:
        yield family.family()


#: What a stepq process exposes: its own counters and its process's CPU, memory and file
#: descriptors (not prometheus_client's global registry: an app embedding stepq keeps its own).
REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(_Kept())
ProcessCollector(registry=REGISTRY)

_enabled = False


def enable() -> None:
    """Start counting in this process (nothing is counted before)."""
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


def script_called(name: str, seconds: float) -> None:
    """A Lua script call's round trip (``stepq.runtime.scripts.Scripts.call``)."""
    if _enabled:
        REDIS_RTT.observe(seconds, name)


def run_ended(function: str, status: str) -> None:
    if _enabled:
        RUNS_ENDED.inc(function, str(status))


def start_skipped(function: str, reason: str) -> None:
    """A start flow control skipped; ``reason`` is the run's reason text ("rate limited: ...")."""
    if _enabled:
        STARTS_SKIPPED.inc(function, skip_kind(reason))


def skip_kind(reason: str) -> str:
    """A skip reason's kind, a bounded label (the text names key values, which are not)."""
    for prefix, kind in (("rate limit", "rate_limit"), ("idempoten", "idempotency"), ("singleton", "singleton")):
        if reason.startswith(prefix):
            return kind
    return "other"


def events_received(count: int) -> None:
    if _enabled:
        EVENTS_RECEIVED.inc(amount=count)


def event_request_refused(status: int) -> None:
    if _enabled:
        EVENT_REQUESTS_REFUSED.inc(str(status))


def render() -> bytes:
    """This process's own metrics in Prometheus's text format (a worker's endpoint)."""
    return generate_latest(REGISTRY)
