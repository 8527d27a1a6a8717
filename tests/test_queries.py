"""The read model (runtime/queries.py, run_index.py, event_queries.py, function_summaries.py): filters,
paging and search over the run indexes, what each event did, the live counts under a mixed workload
with a worker killed mid-step, and the JSON API's answers, refusals and authentication."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys, queries
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.event_queries import get_event, recent_events
from stepq.runtime.function_summaries import function_summaries, live_counts
from stepq.runtime.ingest import Ingest
from stepq.runtime.queries import RunFilter, count_runs, find_runs, run_ids, search_runs
from stepq.runtime.registry import Registry
from stepq.runtime.run_status import RunStatus
from stepq.runtime.scripts import prelude
from stepq.runtime.shards import SHARD_LIMIT, SHARD_TAGS
from stepq.runtime.store import RunStore
from stepq.signing import bearer
from tests.helpers import REDIS_URL, StartWorkers, wait_for_run

APP = "qa"
SIGNING_KEY = "signkey-test-" + "ab" * 32


def config(fn_id: str, *events: str, expression: str | None = None, **flow: Any) -> dict[str, Any]:
    """A function config as a worker registers it; no worker runs it (its runs stay queued)."""
    triggers = [{"event": e, **({"expression": expression} if expression else {})} for e in events]
    return {
        "id": f"{APP}-{fn_id}",
        "fn_id": fn_id,
        "app_id": APP,
        "name": fn_id,
        "triggers": triggers,
        "retries": 0,
        "cancel": [],
        "timeouts": {},
        "flow": flow,
    }


async def all_records(redis: Redis) -> dict[str, dict[str, str]]:
    """Every run record, by reading the keys (the truth the indexes must agree with)."""
    out = {}
    async for key in redis.scan_iter(match="stepq:{*}:run:*", count=1000):
        raw = await redis.hgetall(key)  # type: ignore[misc]
        if raw:
            fields = {
                k.decode(): v.decode(errors="replace")
                for k, v in raw.items()
                if k in (b"fn", b"status", b"created", b"ev")
            }
            out[key.decode().rsplit(":", 1)[1]] = fields
    return out


def newest_first(records: dict[str, dict[str, str]], ids: Any = None) -> list[str]:
    chosen = records if ids is None else {i: records[i] for i in ids}
    return sorted(chosen, key=lambda i: (int(chosen[i]["created"]), i), reverse=True)


async def page_through(redis: Redis, flt: RunFilter, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await find_runs(redis, flt, limit=limit, cursor=cursor)
        seen += [v.run_id for v in page.runs]
        if page.cursor is None:
            return seen
        cursor = page.cursor
    raise AssertionError("paging did not end")


async def setup_events(redis: Redis) -> dict[str, Any]:
    """Register app ``qa`` (no workers) and send events that start, skip, dedupe, join and match nothing."""
    await Registry(redis).register_app(
        APP,
        [
            config("alpha", "qa/a"),
            config("beta", "qa/a", "qa/b"),
            config("picky", "qa/a", expression="event.data.n > 100"),
            config("gamma", "qa/g", rateLimit={"limit": 1, "period": "1h"}),
            config("delta", "qa/d", debounce={"period": "30s"}),
        ],
    )
    store = RunStore(redis)
    ingest = Ingest(redis, store, Registry(redis, store.scripts))
    batch = await ingest.send([stepq.Event(name="qa/a", data={"n": i}) for i in range(30)])  # one ms: ties
    await asyncio.sleep(0.005)
    middle = int(time.time() * 1000)
    await asyncio.sleep(0.005)
    singles = [(await ingest.send([stepq.Event(name="qa/b", data={"n": i})]))[0] for i in range(5)]
    gamma = [(await ingest.send([stepq.Event(name="qa/g")]))[0] for _ in range(3)]
    nothing = await ingest.send([stepq.Event(name="qa/nothing")])
    dup = [(await ingest.send([stepq.Event(name="qa/b", id="dup-1")]))[0] for _ in range(2)]
    delta = [(await ingest.send([stepq.Event(name="qa/d", data={"k": 1})]))[0] for _ in range(2)]
    alphas = [v.run_id for v in (await find_runs(redis, RunFilter(function="alpha"), limit=200)).runs]
    for run_id in alphas[:5]:
        await store.cancel(run_id, "test")
    return {
        "ingest": ingest,
        "batch": batch,
        "middle": middle,
        "singles": singles,
        "gamma": gamma,
        "nothing": nothing[0],
        "dup": dup,
        "delta": delta,
        "cancelled": alphas[:5],
    }


async def test_filters_paging_cursor_search_and_event_outcomes(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = await setup_events(redis)
    records = await all_records(redis)
    everything = newest_first(records)
    # 30 alpha + 30 beta (qa/a), 5 beta (qa/b), 1 beta (dup-1), 1 gamma + 2 skipped, 1 delta
    assert len(everything) == 70
    assert await page_through(redis, RunFilter(), 7) == everything
    # one run a page: a cursor in one status's index, ties of its millisecond in the others
    assert await page_through(redis, RunFilter(), 1) == everything

    # runs created while paging are newer than the cursor: later pages neither repeat nor skip a run
    first = await find_runs(redis, RunFilter(), limit=10)
    newer = await sent["ingest"].send([stepq.Event(name="qa/a", data={"n": 500})])
    rest = await page_through_from(redis, RunFilter(), 9, first.cursor)
    assert [v.run_id for v in first.runs] + rest == everything
    records = await all_records(redis)

    def expect(flt: RunFilter) -> list[str]:
        return [i for i in newest_first(records) if _matches(flt, records[i])]

    filters = [
        RunFilter(function="alpha"),
        RunFilter(function="qa-beta"),
        RunFilter(function="picky"),
        RunFilter(status=RunStatus.CANCELLED),
        RunFilter(status=RunStatus.SKIPPED),
        RunFilter(function="alpha", status=RunStatus.QUEUED),
        RunFilter(function="beta", status=RunStatus.CANCELLED),
        RunFilter(event_name="qa/b"),
        RunFilter(function="beta", event_name="qa/a"),  # neither index covers both
        RunFilter.parse(until=_iso(sent["middle"])),
        RunFilter.parse(since=_iso(sent["middle"]), function="beta"),
        RunFilter(function="no-such-function"),
    ]
    for flt in filters:
        assert await page_through(redis, flt, 4) == expect(flt), flt
        want = expect(flt)
        assert await run_ids(redis, flt, cap=3) == want[:3], flt
        assert await count_runs(redis, flt, cap=1000) == (len(want), False), flt
        assert await count_runs(redis, flt, cap=2) == (min(2, len(want)), len(want) >= 2), flt
    assert len(expect(RunFilter(function="picky"))) == 1  # n = 500 only
    assert set(expect(RunFilter(status=RunStatus.CANCELLED))) == set(sent["cancelled"])
    assert [r["status"] for r in records.values()].count("skipped") == 2

    # the run a cursor names leaves the index (cancelled) before the next page: the page goes on after
    # its place, past the runs of its millisecond read before it
    in_batch = RunFilter(status=RunStatus.QUEUED, until_ms=sent["middle"])
    first_ten = await find_runs(redis, in_batch, limit=10)
    await RunStore(redis).cancel(first_ten.runs[-1].run_id, "test")
    rest = await page_through_from(redis, in_batch, 1, first_ten.cursor)
    assert rest == expect(in_batch)[10:] and len(rest) == 45

    # a filter its index does not cover looks at a bounded number of entries per page, and says so
    monkeypatch.setattr(queries, "PAGE_SCAN_MAX", 2)
    narrow = RunFilter(function="alpha", event_name="qa/b")  # no such run: every entry is looked at
    page = await find_runs(redis, narrow, limit=1)
    assert page.runs == [] and page.truncated and page.cursor is not None
    assert await page_through(redis, narrow, 5) == []

    # search: a run id, an event id (the runs it started), anything else
    [alpha_run] = await run_ids(redis, RunFilter(function="alpha", status=RunStatus.QUEUED), cap=1)
    assert [v.run_id for v in await search_runs(redis, alpha_run)] == [alpha_run]
    by_event = await search_runs(redis, sent["batch"][3])
    assert sorted(v.function for v in by_event) == ["qa-alpha", "qa-beta"]
    assert all(v.event_name == "qa/a" and sent["batch"][3] in v.event_ids for v in by_event)
    assert await search_runs(redis, "nothing-like-this") == []

    # what each event did
    outcomes = await _outcomes(redis, sent["batch"][3])
    assert outcomes == {
        "qa-alpha": ("started", True, None),
        "qa-beta": ("started", True, None),
        "qa-picky": ("no match", False, "its trigger's expression did not hold for the event"),
    }
    assert await _outcomes(redis, sent["nothing"]) == {
        None: ("no match", False, "no function is triggered by 'qa/nothing'")
    }
    gamma = [await _outcomes(redis, e) for e in sent["gamma"]]
    assert [g["qa-gamma"][0] for g in gamma] == ["started", "skipped", "skipped"]
    assert str(gamma[1]["qa-gamma"][2]).startswith("rate limited")
    dup = [await get_event(redis, e) for e in sent["dup"]]
    assert dup[0] is not None and dup[1] is not None
    assert [o.outcome for o in dup[0].outcomes + dup[1].outcomes] == ["started", "deduplicated"]
    assert dup[1].outcomes[0].run_id == dup[0].outcomes[0].run_id and dup[1].sent_id == "dup-1"
    delta = [await get_event(redis, e) for e in sent["delta"]]
    assert [o.outcome for d in delta if d for o in d.outcomes] == ["started", "joined"]
    assert delta[0] and delta[1] and delta[1].outcomes[0].run_id == delta[0].outcomes[0].run_id

    # recent events: newest first, paged, by name
    stored = sent["batch"] + sent["singles"] + sent["gamma"] + [sent["nothing"]] + sent["dup"] + sent["delta"] + newer
    listed: list[str] = []
    cursor = None
    while True:
        events = await recent_events(redis, limit=8, cursor=cursor)
        listed += [e.id for e in events.events]
        if events.cursor is None:
            break
        cursor = events.cursor
    assert sorted(listed) == sorted(stored) and len(listed) == len(set(listed))
    received = [(await get_event(redis, i)).received_ms for i in listed]  # type: ignore[union-attr]
    assert received == sorted(received, reverse=True)
    assert [e.id for e in (await recent_events(redis, name="qa/g")).events] == sent["gamma"][::-1]

    # the filter as text and back
    with pytest.raises(ValueError, match="status: unknown status 'nope'"):
        RunFilter.parse(status="nope")
    with pytest.raises(ValueError, match="since: cannot read 'yesterday'"):
        RunFilter.parse(since="yesterday")
    with pytest.raises(ValueError, match="cursor"):
        await find_runs(redis, RunFilter(), cursor="not-a-cursor")
    flt = RunFilter.parse(function="alpha", status="failed", since="2h", until="2026-11-30T10:00:00.123Z", event="qa/a")
    params = flt.to_params()
    parsed = RunFilter.parse(
        function=params["function"],
        status=params["status"],
        since=params["since"],
        until=params["until"],
        event=params["event"],
    )
    assert parsed == flt
    assert RunFilter.parse(since="90s", now_ms=1_000_000).since_ms == 910_000


async def page_through_from(redis: Redis, flt: RunFilter, limit: int, cursor: str | None) -> list[str]:
    seen: list[str] = []
    while cursor is not None:
        page = await find_runs(redis, flt, limit=limit, cursor=cursor)
        seen += [v.run_id for v in page.runs]
        cursor = page.cursor
    return seen


def _iso(ms: int) -> str:
    return RunFilter(since_ms=ms).to_params()["since"]


def _matches(flt: RunFilter, record: dict[str, str]) -> bool:
    slug = record["fn"]
    if flt.function and flt.function not in (slug, slug.removeprefix(APP + "-")):
        return False
    if flt.status and record["status"] != flt.status.value:
        return False
    created = int(record["created"])
    if flt.since_ms is not None and created < flt.since_ms:
        return False
    if flt.until_ms is not None and created >= flt.until_ms:
        return False
    return flt.event_name is None or record.get("ev") == flt.event_name


async def _outcomes(redis: Redis, event_id: str) -> dict[str | None, tuple[str, bool, str | None]]:
    found = await get_event(redis, event_id)
    assert found is not None
    return {o.function: (o.outcome, o.run_id is not None, o.reason) for o in found.outcomes}


async def test_the_index_key_builders_in_lua_name_the_keys_python_names(redis: Redis) -> None:
    calls: dict[str, Callable[[int, str], str]] = {
        "runs_ev": keys.runs_by_event,
        "runs_st": keys.runs_by_status,
        "runs_fs": lambda shard, arg: keys.runs_by_function_status(shard, *arg.rsplit("|", 1)),
        "runs_ended": lambda shard, arg: keys.recent_ends(shard, *arg.rsplit("|", 1)),
    }
    assert set(calls) == set(keys.INDEX_SHAPES)
    for name, python in calls.items():
        body = f"local out = {{}} for i, tag in ipairs(ARGV) do out[i] = key_{name}(tag, 'a-f|queued') end return out"
        got = await redis.eval(prelude() + body, 0, *SHARD_TAGS)  # type: ignore[misc]
        assert [g.decode() for g in got] == [python(s, "a-f|queued") for s in range(SHARD_LIMIT)], name


async def test_the_json_api_lists_filters_and_refuses_bad_parameters_and_strangers(redis: Redis) -> None:
    sent = await setup_events(redis)
    settings = ApiSettings(event_keys=("event-key",), signing_key=SIGNING_KEY)
    auth = {"authorization": bearer(SIGNING_KEY)}
    with ApiServer(REDIS_URL, settings=settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for path in ("/v0/runs", "/v0/functions", "/v0/events", f"/v0/events/{sent['batch'][0]}"):
                for headers in ({}, {"authorization": "Bearer event-key"}):
                    refused = await http.get(path, headers=headers)
                    assert refused.status_code == 401, (path, refused.text)
            for query, named in [
                ("status=nope", "status"),
                ("since=yesterday", "since"),
                ("until=3x", "until"),
                ("limit=0", "limit"),
                ("limit=abc", "limit"),
                ("cursor=zzz", "cursor"),
                ("colour=red", "colour"),
            ]:
                bad = await http.get(f"/v0/runs?{query}", headers=auth)
                assert bad.status_code == 400 and bad.json()["error"].startswith(named + ":"), (query, bad.text)
            assert (await http.get("/v0/events?limit=9999", headers=auth)).status_code == 400

            got = (await http.get("/v0/runs?function=alpha&status=cancelled&limit=3", headers=auth)).json()
            assert len(got["runs"]) == 3 and {r["status"] for r in got["runs"]} == {"cancelled"}
            more = (
                await http.get(f"/v0/runs?function=alpha&status=cancelled&cursor={got['cursor']}", headers=auth)
            ).json()
            assert sorted(r["run_id"] for r in got["runs"] + more["runs"]) == sorted(sent["cancelled"])
            assert more["cursor"] is None and more["truncated"] is False
            searched = (await http.get(f"/v0/runs?q={sent['batch'][0]}", headers=auth)).json()["runs"]
            assert sorted(r["function"] for r in searched) == ["qa-alpha", "qa-beta"]
            assert searched[0]["event_name"] == "qa/a"

            functions = {f["slug"]: f for f in (await http.get("/v0/functions", headers=auth)).json()["functions"]}
            assert set(functions) == {"qa-alpha", "qa-beta", "qa-picky", "qa-gamma", "qa-delta"}
            assert functions["qa-alpha"]["counts"]["queued"] == 25
            assert functions["qa-beta"]["counts"]["queued"] == 36
            assert functions["qa-gamma"]["flow"] == ["rate limit: 1 runs per 1h, more are skipped"]
            assert functions["qa-picky"]["triggers"] == [{"event": "qa/a", "expression": "event.data.n > 100"}]
            assert functions["qa-alpha"]["served"] == "in-process"

            events = (await http.get("/v0/events?name=qa/g&limit=2", headers=auth)).json()
            assert [e["id"] for e in events["events"]] == sent["gamma"][::-1][:2] and events["cursor"]
            one = await http.get(f"/v0/events/{sent['gamma'][1]}", headers=auth)
            assert one.status_code == 200 and one.json()["outcomes"][0]["outcome"] == "skipped"
            assert (await http.get("/v0/events/01NOSUCHEVENT", headers=auth)).status_code == 404


# -- the live counts under a mixed workload -------------------------------------------------------------


#: Read atomically (one script): the live counts, every run record's function and status (found by
#: KEYS, not by any index of ours), and the members of each status index.
SNAPSHOT = """
local out = {redis.call('HGETALL', ARGV[1]), {}, {}}
for _, key in ipairs(redis.call('KEYS', 'stepq:{*}:run:*')) do
  local got = redis.call('HMGET', key, 'fn', 'status')
  if got[2] then
    table.insert(out[2], {string.match(key, ':run:(.*)$'), got[1], got[2]})
  end
end
for i = 2, #ARGV do
  table.insert(out[3], redis.call('ZRANGE', ARGV[i], 0, -1))
end
return out
"""


async def snapshot(redis: Redis) -> tuple[dict[tuple[str, str], int], Counter[tuple[str, str]]]:
    """The live counts and the (function, status) counts of the run records, read at one instant;
    checks on the way that each status index lists exactly the runs in that status."""
    statuses = [s.value for s in RunStatus]
    index_keys = [keys.runs_by_status(0, s) for s in statuses]
    raw_counts, runs, indexed = await redis.eval(SNAPSHOT, 0, keys.run_counts(0), *index_keys)  # type: ignore[misc]
    counts = {
        (f.decode().rsplit("|", 1)[0], f.decode().rsplit("|", 1)[1]): int(v)
        for f, v in zip(raw_counts[::2], raw_counts[1::2], strict=True)
    }
    truth: Counter[tuple[str, str]] = Counter()
    status_of = {}
    for run_id, fn, status in runs:
        status_of[run_id.decode()] = status.decode()
        truth[fn.decode(), status.decode()] += 1
    listed = {s: {m.decode() for m in members} for s, members in zip(statuses, indexed, strict=True)}
    assert {(run_id, s) for s, ids in listed.items() for run_id in ids} == set(status_of.items())
    return counts, truth


def live(truth: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    terminal = {s.value for s in RunStatus if s.terminal}
    return {k: n for k, n in truth.items() if k[1] not in terminal and n}


@pytest.mark.timeout(120)
async def test_live_counts_follow_every_status_change_of_a_mixed_workload(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    workers = start_workers("queries", n=2, env={"STEPQ_LEASE": "2"})
    events = [stepq.Event(name="q/quick", data={"n": n}) for n in (1, 2, 3, 200)]
    events += [stepq.Event(name="q/flaky", data={"log": str(tmp_path / f"flaky{i}")}) for i in range(3)]
    events += [stepq.Event(name="q/fail") for _ in range(3)]
    events += [stepq.Event(name="q/nap", data={"nap": nap}) for nap in ("300ms", "300ms", "60s", "60s")]
    events += [stepq.Event(name="q/wait", data={"k": k}) for k in range(4)]
    events += [stepq.Event(name="q/fanout") for _ in range(3)]
    events += [stepq.Event(name="q/rated") for _ in range(4)]
    events += [stepq.Event(name="q/throttled") for _ in range(3)]
    events += [stepq.Event(name="q/slow", data={"s": 1.5}) for _ in range(2)]
    sent: list[str] = []
    for i in range(0, len(events), 5):
        sent += await sender.send(events[i : i + 5])
        counts, truth = await snapshot(redis)
        assert counts == live(truth)
    slow = RunFilter(function="slow", status=RunStatus.RUNNING)
    for _ in range(200):  # both slow runs in their 1.5 s step
        if await count_runs(redis, slow, cap=2) == (2, True):
            break
        await asyncio.sleep(0.02)
    for worker in workers:  # SIGKILLed mid-step: the slow runs' jobs come back after the 2 s lease
        worker.proc.send_signal(signal.SIGKILL)
    counts, truth = await snapshot(redis)
    assert counts == live(truth)
    store = RunStore(redis)
    queued = await run_ids(redis, RunFilter(function="throttled", status=RunStatus.QUEUED), cap=10)
    await store.cancel(queued[0], "test")  # one run queued behind the throttle cancelled
    start_workers("queries", n=2, env={"STEPQ_LEASE": "2"})
    waiters = [
        await search_runs(redis, sent[events.index(stepq.Event(name="q/wait", data={"k": k}))]) for k in range(4)
    ]
    for [waiter] in waiters:
        await wait_for_run(redis, waiter.run_id, statuses=("waiting",))
    for k in (0, 1):  # two waits resolved, one waiting run cancelled, one left waiting
        await sender.send([stepq.Event(name="q/go", data={"k": k})])
    await store.cancel(waiters[3][0].run_id, "test")
    # everything settles but 2 long naps, 1 waiter, 1 throttled run queued
    settled = {"t-queries-napper": 2, "t-queries-waiter": 1, "t-queries-throttled": 1}
    deadline = time.monotonic() + 40
    while True:
        counts, truth = await snapshot(redis)
        assert counts == live(truth)
        if _by_fn(live(truth)) == settled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert live(truth) == {
        ("t-queries-napper", "sleeping"): 2,
        ("t-queries-waiter", "waiting"): 1,
        ("t-queries-throttled", "queued"): 1,
    }
    assert truth["t-queries-rated", "skipped"] == 2 and truth["t-queries-failer", "failed"] == 3, truth
    assert truth["t-queries-slow", "completed"] == 2 and truth["t-queries-flaky", "completed"] == 3, truth
    assert await live_counts(redis) == counts
    summaries = {s.slug: s for s in await function_summaries(redis)}
    assert summaries["t-queries-failer"].counts["failed_last_hour"] == 3
    assert summaries["t-queries-quick"].counts["completed_last_hour"] == 4
    assert summaries["t-queries-napper"].counts == {
        "queued": 0,
        "running": 0,
        "sleeping": 2,
        "waiting": 0,
        "failed_last_hour": 0,
        "completed_last_hour": 2,
    }
    assert summaries["t-queries-throttled"].flow == ["throttle: 1 starts per 1m"]


def _by_fn(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (fn, _), n in counts.items():
        out[fn] += n
    return dict(out)
