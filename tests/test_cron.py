"""Cron triggers: parsing and time zones (pure), then one run per tick across competing schedulers on
the real test Redis, catch-up after an outage, and (once the worker runs the cron loop) real workers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import stepq
from stepq.errors import FunctionConfigError
from stepq.expressions import Bindings
from stepq.runtime import keys, shards
from stepq.runtime.codec import unpack
from stepq.runtime.connection import close, open_redis
from stepq.runtime.cron import (
    CRON_EVENT,
    SKIPPED,
    CronScheduler,
    InvalidCronError,
    cron_functions,
    fire_due,
    parse_schedule,
    tick_event_id,
    tick_run_id,
)
from stepq.runtime.event_queries import get_event, recent_events
from stepq.runtime.placement import new_run_id, shard_for
from stepq.runtime.queries import get_run
from stepq.runtime.registry import Registry
from stepq.runtime.shards import event_shard
from stepq.runtime.store import RunStore
from tests.apps import cron_app
from tests.helpers import REDIS_URL, ROOT, StartWorkers, read_lines, runs_of, use_shards

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = pytest.mark.both_deployments

UTC = dt.UTC
PARIS = "Europe/Paris"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


# -- parsing ---------------------------------------------------------------------------------------


def test_five_and_six_fields() -> None:
    five = parse_schedule("*/5 * * * *")
    assert five.tz is UTC
    assert five.latest(at(2025, 1, 15, 12, 7, 30)) == at(2025, 1, 15, 12, 5)
    assert five.next_after(at(2025, 1, 15, 12, 7, 30)) == at(2025, 1, 15, 12, 10)
    # A tick exactly at now is the latest; the next one is strictly after.
    assert five.latest(at(2025, 1, 15, 12, 10)) == at(2025, 1, 15, 12, 10)
    assert five.next_after(at(2025, 1, 15, 12, 10)) == at(2025, 1, 15, 12, 15)
    # Six fields: seconds first, as Inngest (robfig/cron) reads them.
    six = parse_schedule("*/10 * * * * *")
    assert six.latest(at(2025, 1, 15, 12, 7, 35)) == at(2025, 1, 15, 12, 7, 30)
    assert six.next_after(at(2025, 1, 15, 12, 7, 35)) == at(2025, 1, 15, 12, 7, 40)
    every = parse_schedule("*/1 * * * * *")
    assert every.latest(dt.datetime(2025, 1, 15, 12, 7, 35, 999_000, tzinfo=UTC)) == at(2025, 1, 15, 12, 7, 35)


def test_shorthands_question_marks_and_case() -> None:
    assert parse_schedule("@hourly").latest(at(2025, 1, 15, 12, 59)) == at(2025, 1, 15, 12)
    assert parse_schedule("@daily").latest(at(2025, 1, 15, 12, 59)) == at(2025, 1, 15)
    assert parse_schedule("0 9 ? * MON").latest(at(2025, 1, 15, 12)) == at(2025, 1, 13, 9)  # a Wednesday
    assert parse_schedule("0 9 * jan,feb mon-fri").latest(at(2025, 1, 15, 12)) == at(2025, 1, 15, 9)


def test_time_zone_prefix_follows_daylight_saving() -> None:
    paris = parse_schedule(f"TZ={PARIS} 0 9 * * *")
    assert paris.text == f"TZ={PARIS} 0 9 * * *"
    # 09:00 in Paris is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST).
    assert paris.latest(at(2025, 1, 15, 8, 30)) == at(2025, 1, 15, 8)
    assert paris.latest(at(2025, 7, 15, 7, 30)) == at(2025, 7, 15, 7)
    assert paris.latest(at(2025, 7, 15, 6, 59)) == at(2025, 7, 14, 7)
    assert parse_schedule(f"CRON_TZ={PARIS} 0 9 * * *").latest(at(2025, 7, 15, 7, 30)) == at(2025, 7, 15, 7)


def test_daylight_saving_changes_fire_each_tick_once() -> None:
    daily = parse_schedule(f"TZ={PARIS} 30 2 * * *")
    # Spring forward (2025-03-30, 02:00 CET -> 03:00 CEST): 02:30 does not exist, it fires at 03:00.
    assert daily.next_after(at(2025, 3, 29, 12)) == at(2025, 3, 30, 1)
    # Fall back (2025-10-26, 03:00 CEST -> 02:00 CET): 02:30 happens twice, it fires the first time.
    assert daily.next_after(at(2025, 10, 25, 12)) == at(2025, 10, 26, 0, 30)
    assert daily.next_after(at(2025, 10, 26, 0, 30)) == at(2025, 10, 27, 1, 30)
    # Every 15 minutes keeps ticking every 15 minutes of real time through the repeated hour.
    quarter = parse_schedule(f"TZ={PARIS} */15 * * * *")
    tick, seen = at(2025, 10, 25, 23, 50), []
    while tick < at(2025, 10, 26, 2, 10):
        nxt = quarter.next_after(tick)
        assert nxt is not None
        seen.append(nxt.astimezone(UTC))
        tick = nxt
    assert all(b - a == dt.timedelta(minutes=15) for a, b in itertools.pairwise(seen))


@pytest.mark.parametrize(
    "text",
    [f"TZ={PARIS} 30 2 * * *", f"TZ={PARIS} */15 * * * *", "TZ=America/New_York 0 0-3 * * *", "*/7 * * * *"],
)
def test_latest_agrees_with_forward_ticks_around_dst(text: str) -> None:
    """For every minute around both changes: latest <= now < next, no forward tick in between, and
    the memoized ``latest_ms`` answers the same."""
    schedule = parse_schedule(text)
    for start in (at(2025, 3, 29, 22), at(2025, 10, 25, 22), at(2025, 3, 8, 22), at(2025, 11, 1, 22)):
        for minute in range(0, 8 * 60):
            now = start + dt.timedelta(minutes=minute, seconds=17)
            latest, following = schedule.latest(now), schedule.next_after(now)
            assert latest is not None and following is not None
            assert latest <= now < following, (text, now, latest, following)
            after_latest = schedule.next_after(latest)
            assert after_latest is not None and after_latest > now, (text, now, latest, after_latest)
            assert schedule.latest_ms(ms(now)) == ms(latest)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected a cron expression"),
        ("*/5 * * *", "expected 5 fields"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "bad minute '61'"),
        ("0 0 31 2 *", "bad day-of-month '31'"),
        ("*/0 * * * * *", "bad second '*/0'"),
        ("0 9 * * funday", "bad day-of-week 'funday'"),
        ("TZ=Mars/Olympus 0 9 * * *", "unknown time zone 'Mars/Olympus'"),
        ("TZ= 0 9 * * *", "TZ= needs a time zone name"),
        (f"TZ={PARIS}", "not followed by a schedule"),
        ("@fortnightly", "unknown shorthand '@fortnightly'"),
    ],
)
def test_invalid_expressions_say_what_and_where(text: str, says: str) -> None:
    with pytest.raises(InvalidCronError) as caught:
        parse_schedule(text)
    assert says in str(caught.value)
    assert repr(text) in str(caught.value)
    assert isinstance(caught.value, FunctionConfigError)


def test_cron_functions_lists_and_validates_triggers() -> None:
    assert sorted(cron_functions(cron_app.client.functions.values())) == [
        ("t-cron-every-second", "t-cron", "*/1 * * * * *"),
        ("t-cron-paris-morning", "t-cron", f"TZ={PARIS} 0 9 * * 1-5"),
    ]
    client = stepq.Client("t-cron-bad")

    @client.create_function(id="typo", trigger=stepq.TriggerCron(cron="*/5 * * *"))
    async def typo(ctx: stepq.Context) -> None:
        return None

    with pytest.raises(InvalidCronError, match="function 'typo': cron '\\*/5 \\* \\* \\*': expected 5 fields"):
        cron_functions([typo])


# -- firing, on the real test Redis ----------------------------------------------------------------

SLUG, APP = "t-cron-tick", "t-cron"


async def runs_by_tick(redis: Redis, run_ids: list[str]) -> dict[int, list[str]]:
    """The runs given, grouped by the tick of their cron event."""
    out: dict[int, list[str]] = {}
    for run_id in run_ids:
        view = await get_run(redis, run_id, with_steps=False)
        assert view is not None, run_id
        [event_id] = view.event_ids
        out.setdefault(int(event_id.rsplit(":", 1)[1]), []).append(run_id)
    return out


async def all_run_ids(redis: Redis) -> list[str]:
    return [r.decode() for shard in shards.shards() for r in await redis.zrange(keys.runs_active(shard), 0, -1)]


#: Functions' flow control for the sharded variants: none (a tick's run goes to its tick id's
#: shard), or a function-wide throttle (to the function's shard; runtime/placement.py).
FLOWS: dict[str, dict[str, Any]] = {"none": {}, "throttle": {"throttle": {"limit": 100, "period": "1s"}}}


@pytest.fixture(params=[(1, "none"), (4, "none"), (4, "throttle")], ids=lambda p: f"{p[0]}-shards-{p[1]}")
async def sharded(request: pytest.FixtureRequest, redis: Redis) -> int:
    """This process uses 1 or 4 shards, and the cron functions have that flow control."""
    count, flow = request.param
    await use_shards(redis, count)
    if FLOWS[flow]:
        configs = [
            {"id": slug, "app_id": APP, "triggers": [{"cron": "* * * * *"}], "flow": FLOWS[flow]}
            for slug in (SLUG, "t-cron-other")
        ]
        await Registry(redis).register_app(APP, configs)
    return int(count)


async def test_a_due_tick_starts_one_run_with_the_scheduled_event(redis: Redis) -> None:
    store = RunStore(redis)
    tick = at(2025, 1, 15, 12, 5)
    [run_id] = await fire_due(redis, store, [(SLUG, APP, "*/5 * * * *")], now=tick + dt.timedelta(milliseconds=300))
    view = await get_run(redis, run_id, with_steps=False)
    assert view is not None and view.function == SLUG and view.app_id == APP and view.status == "queued"
    assert view.event_ids == [tick_event_id(SLUG, ms(tick))]
    # The run carries the event, and the event is stored like a sent one.
    [event] = unpack(await redis.get(keys.events(run_id)))
    assert event == {"name": CRON_EVENT, "data": {"cron": "*/5 * * * *"}, "id": f"cron:{SLUG}:{ms(tick)}",
                     "ts": ms(tick), "user": {}}  # fmt: skip
    assert unpack(await redis.get(keys.event(event["id"]))) == event
    assert await redis.zscore(keys.events_index(event_shard(event["id"])), event["id"]) is not None
    # the dashboard's events page shows the run it started
    shown = await get_event(redis, event["id"])
    assert shown is not None and [(o.function, o.outcome, o.run_id) for o in shown.outcomes] == [
        (SLUG, "started", run_id)
    ]
    assert [e.id for e in (await recent_events(redis, name=CRON_EVENT)).events] == [event["id"]]
    assert view.event_name == CRON_EVENT
    assert int(await redis.get(keys.cron_last(SLUG))) == ms(tick)
    # The same tick again, from this or another worker: nothing new.
    assert await fire_due(redis, store, [(SLUG, APP, "*/5 * * * *")], now=tick + dt.timedelta(seconds=40)) == []
    assert await all_run_ids(redis) == [run_id]


@pytest.mark.parametrize("count", [1, 4])
async def test_a_worker_dying_between_a_ticks_claim_and_its_event_leaves_the_next_one_to_finish_it(
    redis: Redis, count: int
) -> None:
    """The claim (the run's creation) and the event's record with ``last`` are separate writes (on a
    cluster, separate slots). A worker dying in between leaves the run; the next claim of the tick
    (any worker: the run id is the tick's own) finds that run, creates nothing and stores the event."""
    await use_shards(redis, count)
    tick = at(2025, 1, 15, 12, 5)
    functions = [(SLUG, APP, "*/5 * * * *")]
    dying = CronScheduler(RunStore(redis), functions)

    async def killed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before its second write")

    dying._advance = killed  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        await dying.fire_due(tick + dt.timedelta(milliseconds=300))
    run_id = tick_run_id(SLUG, ms(tick), new_run_id(SLUG, None, Bindings(), tick_event_id(SLUG, ms(tick))))
    assert (await get_run(redis, run_id, with_steps=False)) is not None  # the claim created the run...
    event_id = tick_event_id(SLUG, ms(tick))
    assert await get_event(redis, event_id) is None and await redis.get(keys.cron_last(SLUG)) is None  # ...only
    assert await fire_due(redis, RunStore(redis), functions, now=tick + dt.timedelta(seconds=2)) == []
    shown = await get_event(redis, event_id)
    assert shown is not None and [(o.function, o.outcome, o.run_id) for o in shown.outcomes] == [
        (SLUG, "started", run_id)
    ]
    assert int(await redis.get(keys.cron_last(SLUG))) == ms(tick)
    assert [r.run_id for r in await runs_of(redis, SLUG)] == [run_id]


async def test_two_schedulers_racing_on_one_clock_start_one_run_per_tick(redis: Redis, sharded: int) -> None:
    """Two schedulers (separate connections, like two workers) asked at the same instants, 20 ticks;
    a third, stateless caller joins on every other tick."""
    other = await open_redis(REDIS_URL)
    try:
        functions = [(SLUG, APP, "* * * * *")]
        a = CronScheduler(RunStore(redis), functions)
        b = CronScheduler(RunStore(other), functions)
        start = at(2025, 1, 15, 12)
        created: list[str] = []
        for minute in range(20):
            tick = start + dt.timedelta(minutes=minute)
            calls: list[Any] = [a.fire_due(tick), b.fire_due(tick + dt.timedelta(milliseconds=5))]
            if minute % 2:
                calls.append(fire_due(other, RunStore(other), functions, now=tick + dt.timedelta(seconds=1)))
            for ids in await asyncio.gather(*calls):
                created += ids
            # Later calls within the same minute find nothing to do.
            assert await a.fire_due(tick + dt.timedelta(seconds=30)) == []
            assert await b.fire_due(tick + dt.timedelta(seconds=59)) == []
        assert len(created) == len(set(created)) == 20
        by_tick = await runs_by_tick(redis, created)
        assert sorted(by_tick) == [ms(start + dt.timedelta(minutes=m)) for m in range(20)]
        assert all(len(ids) == 1 for ids in by_tick.values())
        assert sorted(await all_run_ids(redis)) == sorted(created)
    finally:
        await close(other)


async def test_two_processes_on_the_real_clock_five_ticks(redis: Redis, tmp_path: Path) -> None:
    """Two processes run the cron loop of ``tests.apps.cron_app`` for 6.5 s against a schedule that
    ticks every second: every tick in that span starts exactly one run, none is missed."""
    outs = [tmp_path / f"scheduler-{i}.runs" for i in range(2)]
    command = [sys.executable, "-m", "tests.apps.cron_app", "schedule", "--redis-url", REDIS_URL]
    procs = [
        subprocess.Popen(
            [*command, "--seconds", "6.5", "--every", "0.02", "--out", str(out)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for out in outs
    ]
    began = time.time()
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    ended = time.time()
    created = [run_id for out in outs for run_id in read_lines(out)]
    assert len(created) == len(set(created))
    by_tick = await runs_by_tick(redis, created)
    ticks = sorted(by_tick)
    assert len(ticks) >= 5, ticks
    assert all(len(ids) == 1 for ids in by_tick.values()), by_tick
    # Consecutive seconds from the first to the last: no tick lost, none doubled.
    assert ticks == list(range(ticks[0], ticks[-1] + 1000, 1000))
    assert began * 1000 - 1000 < ticks[0] and ticks[-1] <= ended * 1000
    # Only the every-second function ran: the Paris one saw no tick of its own since it was first seen.
    for run_id in created:
        view = await get_run(redis, run_id, with_steps=False)
        assert view is not None and view.function == "t-cron-every-second"
    assert sorted(await all_run_ids(redis)) == sorted(created)


async def test_an_outage_within_catch_up_fires_only_the_newest_tick(redis: Redis) -> None:
    functions = [(SLUG, APP, "*/5 * * * *")]
    t0 = at(2025, 1, 15, 12, 0)
    before = CronScheduler(RunStore(redis), functions, catch_up=dt.timedelta(minutes=10))
    [first] = await before.fire_due(t0 + dt.timedelta(seconds=1))
    # Every worker is down for 37 minutes: ticks 12:05 ... 12:35 pass. A fresh worker (no memory)
    # starts at 12:37:10: only 12:35 fires, once, whatever the number of workers coming back.
    restarted = [CronScheduler(RunStore(redis), functions, catch_up=dt.timedelta(minutes=10)) for _ in range(3)]
    back = t0 + dt.timedelta(minutes=37, seconds=10)
    created = [i for ids in await asyncio.gather(*(s.fire_due(back) for s in restarted)) for i in ids]
    assert len(created) == 1
    assert await runs_by_tick(redis, [first, *created]) == {
        ms(t0): [first],
        ms(t0 + dt.timedelta(minutes=35)): created,
    }
    assert await restarted[0].fire_due(back + dt.timedelta(seconds=30)) == []
    # And the schedule goes on.
    assert len(await restarted[1].fire_due(t0 + dt.timedelta(minutes=40))) == 1


async def test_an_outage_beyond_catch_up_fires_nothing_until_the_next_tick(redis: Redis) -> None:
    functions = [(SLUG, APP, "0 * * * *")]
    t0 = at(2025, 1, 15, 12)
    catch_up = dt.timedelta(minutes=10)
    assert len(await fire_due(redis, RunStore(redis), functions, now=t0, catch_up=catch_up)) == 1
    # Down from 12:00 to 15:20: the 15:00 tick is 20 minutes old, beyond the catch-up window.
    back = t0 + dt.timedelta(hours=3, minutes=20)
    assert await fire_due(redis, RunStore(redis), functions, now=back, catch_up=catch_up) == []
    skipped = tick_event_id(SLUG, ms(t0 + dt.timedelta(hours=3)))
    assert await redis.get(keys.dedupe(shard_for(SLUG, None, Bindings(), skipped), SLUG, skipped)) == SKIPPED.encode()
    assert int(await redis.get(keys.cron_last(SLUG))) == ms(t0 + dt.timedelta(hours=3))
    # Down from 12:00 to 15:09 instead would have fired 15:00; the next tick fires as usual.
    [run_id] = await fire_due(redis, RunStore(redis), functions, now=t0 + dt.timedelta(hours=4, seconds=1))
    assert list(await runs_by_tick(redis, [run_id])) == [ms(t0 + dt.timedelta(hours=4))]
    assert len(await all_run_ids(redis)) == 2


async def test_a_new_function_fires_no_tick_from_before_it_was_seen(redis: Redis) -> None:
    functions = [(SLUG, APP, "*/5 * * * *")]
    tick = at(2025, 1, 15, 12, 5)
    # First seen 40 s after a tick: that tick is not its to fire; the next one is.
    assert await fire_due(redis, RunStore(redis), functions, now=tick + dt.timedelta(seconds=40)) == []
    assert int(await redis.get(keys.cron_last(SLUG))) == ms(tick)
    assert len(await fire_due(redis, RunStore(redis), functions, now=tick + dt.timedelta(minutes=5))) == 1
    # First seen a second after its tick (deployed just before it): that tick fires.
    await redis.flushdb()
    assert len(await fire_due(redis, RunStore(redis), functions, now=tick + dt.timedelta(seconds=1))) == 1


async def test_a_skipped_tick_stays_skipped_for_a_worker_with_a_stale_view(redis: Redis, sharded: int) -> None:
    """A worker whose clock runs behind read no ``last`` yet: the tick another worker decided to skip
    is refused by the tick's claim, not only by ``last``."""
    functions = [(SLUG, APP, "*/5 * * * *")]
    tick = at(2025, 1, 15, 12, 5)
    assert await fire_due(redis, RunStore(redis), functions, now=tick + dt.timedelta(seconds=40)) == []
    await redis.delete(keys.cron_last(SLUG))  # as if the slow worker had read it before it was written
    assert await fire_due(redis, RunStore(redis), functions, now=tick + dt.timedelta(seconds=1)) == []
    assert await all_run_ids(redis) == []
    assert int(await redis.get(keys.cron_last(SLUG))) == ms(tick)


async def test_several_cron_triggers_fire_on_the_union_of_their_ticks(redis: Redis) -> None:
    functions = [(SLUG, APP, "0 * * * *"), (SLUG, APP, "*/20 * * * *"), ("t-cron-other", APP, "30 * * * *")]
    scheduler = CronScheduler(RunStore(redis), functions)
    start = at(2025, 1, 15, 12)
    created = []
    for minute in range(0, 121, 10):
        created += await scheduler.fire_due(start + dt.timedelta(minutes=minute, milliseconds=500))
    by_tick = await runs_by_tick(redis, created)
    # 12:00 is a tick of both schedules of SLUG and starts one run.
    assert sorted((t - ms(start)) // 60_000 for t in by_tick) == [0, 20, 30, 40, 60, 80, 90, 100, 120]
    assert all(len(ids) == 1 for ids in by_tick.values())
    events = [unpack(await redis.get(keys.events(ids[0])))[0] for _, ids in sorted(by_tick.items())]
    assert [e["data"]["cron"] for e in events][:3] == ["0 * * * *", "*/20 * * * *", "30 * * * *"]


async def test_idle_calls_are_cheap(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler asks Redis nothing between ticks once it knows the current one is handled; the
    stateless ``fire_due`` asks once (one pipeline: the last ticks' keys live apart on a cluster)."""
    functions = [(SLUG, APP, "*/5 * * * *"), ("t-cron-other", APP, "*/10 * * * *")]
    calls = Counter[str]()

    pipeline = redis.pipeline

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        calls["pipeline"] += 1
        return pipeline(*args, **kwargs)

    # on this very client (a Redis or a RedisCluster)
    monkeypatch.setattr(redis, "pipeline", counted_pipeline)
    counting = redis
    scheduler = CronScheduler(RunStore(counting), functions)
    tick = at(2025, 1, 15, 12, 10)
    assert len(await scheduler.fire_due(tick)) == 2
    calls.clear()
    for second in range(1, 120):
        assert await scheduler.fire_due(tick + dt.timedelta(seconds=second)) == []
    assert calls == {}
    assert await fire_due(counting, RunStore(counting), functions, now=tick + dt.timedelta(seconds=3)) == []
    assert calls == {"pipeline": 1}


# -- real workers (once the worker runs the cron loop) ---------------------------------------------


def _worker_runs_cron() -> bool:
    from stepq.workers.worker import StepqWorker

    return hasattr(StepqWorker, "_fire_cron")


@pytest.mark.skipif(not _worker_runs_cron(), reason="the worker does not run the cron loop yet")
async def test_two_workers_run_each_tick_once(redis: Redis, start_workers: StartWorkers, tmp_path: Path) -> None:
    log = tmp_path / "ticks.log"
    workers = start_workers("cron_app", n=2, env={"STEPQ_TEST_CRON_LOG": str(log)})
    await asyncio.sleep(6.5)
    for worker in workers:
        worker.stop()
    ticks = [int(line.split()[0]) for line in read_lines(log)]
    counts = Counter(ticks)
    assert len(counts) >= 5, ticks
    assert all(n == 1 for n in counts.values()), counts
    ordered = sorted(counts)
    # The last tick may have been claimed and not yet run when the workers stopped.
    assert ordered == list(range(ordered[0], ordered[-1] + 1000, 1000)), ordered
