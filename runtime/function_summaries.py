"""Every registered function, as the dashboard's functions page shows it: triggers, retries, flow
control in words, where it runs, and its live counts (kept by runtime/lua/run_index.lua)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

from stepq.durations import to_duration_str
from stepq.flow_spec import ConcurrencyLimit, FlowControl

from . import keys
from .connection import RedisClient
from .placement import Rule, rule_of
from .registry import FunctionRecord, Registry
from .run_status import TERMINAL, RunStatus
from .shards import shards

#: The statuses counted live (those a run is in until it ends).
LIVE_STATUSES = tuple(status for status in RunStatus if status not in TERMINAL)
#: How far back ``failed_last_hour`` and ``completed_last_hour`` look (the retention, when shorter).
RECENT_MS = 3600 * 1000


@dataclasses.dataclass(slots=True)
class FunctionSummary:
    slug: str
    app_id: str
    name: str
    #: ``{"event": name, "expression": cel | None}`` or ``{"cron": expression}`` per trigger.
    triggers: list[dict[str, Any]]
    retries: int | None
    #: Flow control in words, one line per setting ("throttle: 10 starts per 1m"...).
    flow: list[str]
    #: Which shard its runs are created in, when flow control decides it ("one shard per value of
    #: event.data.user (throttle)", runtime/placement.py); '' when they spread over all shards.
    placement: str
    #: "http" (served by an app over HTTP, ``url``) or "in-process" (run by the app's workers).
    served: str
    url: str | None
    #: Runs now queued, running, sleeping, waiting, and ended failed or completed in the last hour.
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ms(ms: int) -> str:
    return to_duration_str(dt.timedelta(milliseconds=ms))


def _key(key: str | None) -> str:
    return f" per {key}" if key else ""


def _concurrency(limit: ConcurrencyLimit, what: str) -> str:
    scope = "" if limit.scope == "fn" else f" (scope {limit.scope})"
    return f"concurrency: {limit.limit} {what} at once{_key(limit.key)}{scope}"


def describe_flow(flow: FlowControl) -> list[str]:
    """A function's flow control as lines people read."""
    lines = [_concurrency(c, "steps") for c in flow.concurrency]
    lines += [_concurrency(c, "runs") for c in flow.run_concurrency]
    if flow.throttle:
        t = flow.throttle
        burst = f" (burst {t.burst})" if t.burst > 1 else ""
        lines.append(f"throttle: {t.limit} starts per {_ms(t.period_ms)}{burst}{_key(t.key)}")
    if flow.rate_limit:
        r = flow.rate_limit
        lines.append(f"rate limit: {r.limit} runs per {_ms(r.period_ms)}{_key(r.key)}, more are skipped")
    if flow.debounce:
        d = flow.debounce
        timeout = f", at most {_ms(d.timeout_ms)} late" if d.timeout_ms else ""
        lines.append(f"debounce: {_ms(d.period_ms)}{_key(d.key)}{timeout}")
    if flow.batch:
        b = flow.batch
        condition = f", events where {b.if_exp}" if b.if_exp else ""
        lines.append(f"batch: up to {b.max_size} events or {_ms(b.timeout_ms)}{_key(b.key)}{condition}")
    if flow.priority:
        lines.append(f"priority: {flow.priority.run}")
    if flow.idempotency:
        lines.append(f"idempotency: one run per {flow.idempotency} in 24h")
    if flow.singleton:
        s = flow.singleton
        effect = "is skipped" if s.mode == "skip" else "cancels the active one"
        lines.append(f"singleton{_key(s.key)}: a new run {effect}")
    return lines


def _placement(flow: FlowControl) -> str:
    rule = rule_of(flow)
    return "" if rule.rule is Rule.SPREAD else f"runs: {rule.describe()}"


def _triggers(config: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for trigger in config.get("triggers", []):
        if "event" in trigger:
            out.append({"event": trigger["event"], "expression": trigger.get("expression") or None})
        elif "cron" in trigger:
            out.append({"cron": trigger["cron"]})
    return out


def _summary(record: FunctionRecord, counts: dict[str, int]) -> FunctionSummary:
    config = record.config
    url = config.get("url")
    http = config.get("queue") == keys.HTTP_QUEUE_ID and bool(url)
    retries = config.get("retries")
    return FunctionSummary(
        slug=record.slug,
        app_id=record.app_id,
        name=str(config.get("name") or record.slug),
        triggers=_triggers(config),
        retries=retries if isinstance(retries, int) else None,
        flow=describe_flow(record.flow),
        placement=_placement(record.flow),
        served="http" if http else "in-process",
        url=str(url) if http else None,
        counts=counts,
    )


async def live_counts(redis: RedisClient) -> dict[tuple[str, str], int]:
    """Runs now in each status that is not an end, by (function slug, status), over every shard."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards():
            pipe.hgetall(keys.run_counts(shard))
        replies = await pipe.execute()
    totals: dict[tuple[str, str], int] = {}
    for raw in replies:
        for field, value in raw.items():
            slug, _, status = field.decode().rpartition("|")
            totals[slug, status] = totals.get((slug, status), 0) + int(value)
    return totals


async def function_summaries(redis: RedisClient, *, now_ms: int | None = None) -> list[FunctionSummary]:
    """Every registered function with its live counts, by slug."""
    records = await Registry(redis).functions()
    live = await live_counts(redis)
    since = (now_ms if now_ms is not None else int(time.time() * 1000)) - RECENT_MS
    ended = (RunStatus.FAILED, RunStatus.COMPLETED)
    async with redis.pipeline(transaction=False) as pipe:
        for record in records:
            for status in ended:
                for shard in shards():
                    pipe.zcount(keys.recent_ends(shard, record.slug, status), since, "+inf")
        recent = iter(await pipe.execute())
    out = []
    for record in records:
        counts = {status.value: live.get((record.slug, status.value), 0) for status in LIVE_STATUSES}
        for status in ended:
            counts[f"{status.value}_last_hour"] = sum(int(next(recent)) for _ in shards())
        out.append(_summary(record, counts))
    return out
