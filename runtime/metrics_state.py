"""The deployment's state as Prometheus gauges, read from Redis when the API is scraped: runs by
function and status, flow-control waits, each queue's depth and the age of its oldest due job.

Apart from ``stepq.runtime.metrics`` (the counters every process keeps), which the Lua script
calls time on every round trip: this module reads the registry and the run indexes, which sit
above the scripts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import keys, metrics
from .connection import RedisClient
from .function_summaries import live_counts
from .registry import Registry
from .run_status import RunStatus
from .shards import shards

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


async def collect_state(redis: RedisClient, *, cap: int = SCAN_CAP) -> StateSnapshot:
    """Read runs by status, flow-control waits and queue depths from Redis.

    Runs by status come from the run indexes (runtime/lua/run_index.lua): the live counts of the
    statuses that are not ends (one hash per shard), and the size of each registered function's
    index of each end status (the ended runs kept until their retention ends). Flow-control waits
    read the records of the queued and running runs, at most ``cap`` of each per shard."""
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


async def _count_waits(redis: RedisClient, run_ids: list[str], snap: StateSnapshot, now_ms: int) -> None:
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
    """The API's metrics: this process's counters (``metrics.render``) with the state gauges of
    ``snap`` (or, ``state_failed``, a gauge saying they could not be read)."""
    text = metrics.render()
    if snap is not None or state_failed:
        state = CollectorRegistry(auto_describe=False)
        state.register(_Snapshot(snap) if snap is not None else _ReadFailed())
        text += generate_latest(state)
    return text


def metric_names(families: Iterable[Metric] | None = None) -> set[str]:
    """Every metric name stepq exports, as they appear in a scrape (counters with ``_total``,
    histograms with ``_bucket``, ``_sum`` and ``_count``): for checking dashboards against."""
    names: set[str] = set()
    for family in families or [*metrics.kept_families(), *_Snapshot(StateSnapshot()).collect()]:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names
