"""Prometheus metrics: what every stepq process counts, and what the API reads from Redis at scrape time.

Two kinds:

- *Counters and histograms* a process keeps as it works (``REGISTRY``): a worker counts the steps it
  runs, retries, refused writes, lost leases and its Redis round trips (``stepq.workers.metrics``
  classifies a job's outcome); the API counts the events it receives and refuses; whichever process
  ends a run or skips a start counts that. Each process exposes its own; Prometheus sums them.
- *Gauges of the whole deployment* (runs by status, queue depth and age, flow-control waits), read
  from Redis when scraped (``collect_state``), served by the API only: every worker reading the
  same keys would multiply the cost and the series.

Nothing is counted until ``enable()`` (the API's app and a worker given ``--metrics-port`` call
it), so a worker without metrics pays one flag check per hook. Labels are bounded: a function's
slug, a queue id, a status, an outcome or reason from a fixed list, a script name; never a run,
event or job id. The pure code (plan, decide, the SDK's engine) knows nothing of this module.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from . import keys
from .run_status import RunStatus
from .shards import shards

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


# -- the deployment's state, read from Redis at scrape time -------------------------------------------

#: At most this many queued and this many running runs are read per scrape for the flow-control
#: gauge (``StateSnapshot.partial`` says when there were more): its cost stays bounded.
SCAN_CAP = 5_000
#: Runs read per pipelined round trip.
SCAN_CHUNK = 500
#: The statuses a run can wait on flow control in (a slot for its next step, or a held start).
FLOW_WAIT_STATUSES = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
_ENDED = tuple(status.value for status in RunStatus if status.terminal)


@dataclasses.dataclass(slots=True)
class StateSnapshot:
    """What one scrape read of the deployment's state."""

    #: (function, status) -> runs.
    runs: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    #: (function, kind) -> runs waiting on flow control now: kind ``concurrency`` (for a slot) or
    #: ``throttle`` (their start is held).
    flow_waiting: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    #: queue id -> (due jobs nobody runs, age in seconds of the oldest of them; 0 when none).
    queues: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)
    #: More than ``SCAN_CAP`` runs were queued (or running): ``flow_waiting`` covers the newest.
    partial: bool = False
    #: How long the reads took.
    seconds: float = 0.0


async def collect_state(redis: Redis, *, cap: int = SCAN_CAP) -> StateSnapshot:
    """Read runs by status, flow-control waits and queue depths from Redis.

    Runs by status come from the run indexes (runtime/lua/run_index.lua): the live counts of the
    statuses that are not ends (one hash per shard), and the size of each registered function's
    index of each end status (the ended runs kept until their retention ends). Flow-control waits
    read the records of the queued and running runs, at most ``cap`` of each per shard."""
    from .function_summaries import live_counts  # here: the registry's scripts time their calls with this module
    from .registry import Registry

    started = time.perf_counter()
    snap = StateSnapshot()
    now_ms = int(time.time() * 1000)
    records = await Registry(redis).functions()
    snap.runs.update(await live_counts(redis))
    slugs = sorted({record.slug for record in records} | {slug for slug, _ in snap.runs})
    async with redis.pipeline(transaction=False) as pipe:
        for slug in slugs:
            for status in _ENDED:
                for shard in shards():
                    pipe.zcard(keys.runs_by_function_status(shard, slug, status))
        sizes = iter(await pipe.execute())
    for slug in slugs:
        for status in _ENDED:
            n = sum(int(next(sizes)) for _ in shards())
            if n:
                snap.runs[slug, status] = n
    for shard in shards():
        for status in FLOW_WAIT_STATUSES:
            ids = await redis.zrevrange(keys.runs_by_status(shard, status), 0, cap)  # one more says "partial"
            if len(ids) > cap:
                snap.partial, ids = True, ids[:cap]
            await _count_waits(redis, [i.decode() for i in ids], snap, now_ms)
    queue_ids = {keys.HTTP_QUEUE_ID} | {str(record.config.get("queue") or record.app_id) for record in records}
    for queue_id in sorted(queue_ids):
        depth, oldest = 0, None
        for shard in shards():
            name = keys.queue(shard, queue_id)
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zcount(name, "-inf", now_ms)
                pipe.zrange(name, 0, 0, withscores=True)
                count, first = await pipe.execute()
            depth += int(count)
            if count and first:
                score = float(first[0][1])
                oldest = score if oldest is None else min(oldest, score)
        age = max(0.0, (now_ms - oldest) / 1000) if oldest is not None and depth else 0.0
        snap.queues[queue_id] = (depth, age)
    snap.seconds = time.perf_counter() - started
    return snap


async def _count_waits(redis: Redis, run_ids: list[str], snap: StateSnapshot, now_ms: int) -> None:
    """Count the runs of ``run_ids`` waiting for a concurrency slot or a throttled start."""
    for start in range(0, len(run_ids), SCAN_CHUNK):
        chunk = run_ids[start : start + SCAN_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for run_id in chunk:
                pipe.hmget(keys.run(run_id), ["fn", "slot_wait", "held_until"])
            rows = await pipe.execute()
        for fn, slot_wait, held_until in rows:
            if fn is None:
                continue  # ended and expired between the index read and this one
            function = fn.decode()
            if slot_wait:
                key = (function, "concurrency")
                snap.flow_waiting[key] = snap.flow_waiting.get(key, 0) + 1
            if held_until is not None and int(held_until) > now_ms:
                key = (function, "throttle")
                snap.flow_waiting[key] = snap.flow_waiting.get(key, 0) + 1


class _Snapshot(Collector):
    """The families of one ``StateSnapshot`` (a collector that reads nothing itself)."""

    def __init__(self, snap: StateSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        runs = GaugeMetricFamily(
            "stepq_runs",
            "Runs in Redis by function and status (ended ones until their retention ends).",
            labels=["function", "status"],
        )
        for (function, status), n in sorted(snap.runs.items()):
            runs.add_metric([function, status], n)
        waiting = GaugeMetricFamily(
            "stepq_flow_control_waiting_runs",
            "Active runs waiting on flow control now: kind concurrency (for a slot) or throttle (a held start).",
            labels=["function", "kind"],
        )
        for (function, kind), n in sorted(snap.flow_waiting.items()):
            waiting.add_metric([function, kind], n)
        depth = GaugeMetricFamily("stepq_queue_depth", "Jobs due in a queue that no worker runs yet.", labels=["queue"])
        age = GaugeMetricFamily(
            "stepq_queue_oldest_age_seconds", "How long the oldest due job of a queue has waited.", labels=["queue"]
        )
        for queue_id, (n, seconds) in sorted(snap.queues.items()):
            depth.add_metric([queue_id], n)
            age.add_metric([queue_id], seconds)
        partial = GaugeMetricFamily(
            "stepq_flow_control_waiting_partial",
            f"1 when more than {SCAN_CAP} runs were queued or running: the waiting runs counted are among the newest.",
            value=int(snap.partial),
        )
        took = GaugeMetricFamily(
            "stepq_state_scrape_seconds",
            "How long reading stepq_runs and the queue gauges from Redis took.",
            value=snap.seconds,
        )
        yield from (runs, waiting, depth, age, partial, took, _read_ok(1))


class _ReadFailed(Collector):
    def collect(self) -> Iterator[Metric]:
        yield _read_ok(0)


def _read_ok(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "stepq_state_read_ok",
        "1 when this scrape read the state gauges from Redis, 0 when Redis failed it.",
        value=value,
    )


def render(snap: StateSnapshot | None = None, *, state_failed: bool = False) -> bytes:
    """This process's metrics in Prometheus's text format, with the state gauges of ``snap`` (or,
    ``state_failed``, a gauge saying they could not be read)."""
    text = generate_latest(REGISTRY)
    if snap is not None or state_failed:
        state = CollectorRegistry(auto_describe=False)
        state.register(_Snapshot(snap) if snap is not None else _ReadFailed())
        text += generate_latest(state)
    return text


def metric_names(families: Iterable[Metric] | None = None) -> set[str]:
    """Every metric name stepq exports, as they appear in a scrape (counters with ``_total``,
    histograms with ``_bucket``, ``_sum`` and ``_count``): for checking dashboards against."""
    names: set[str] = set()
    for family in families or [*_Kept().collect(), *_Snapshot(StateSnapshot()).collect()]:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names
