"""Issue 12's features together, under concurrency and a fault: the run indexes and live counts,
the query API, and the operator actions (replay, resume, cancel, by filter), while three senders send,
bulk actions run, single actions race cancellations, and a worker is SIGKILLed and replaced.

Once every run has settled, the invariants are checked against a scan of every run record
(``scan``): the live counts, every index listing (``find_runs`` pages, ``run_ids``, ``count_runs``),
the replay links both ways, the memo prefix each resumed run kept, that no run is left with nothing
to move it on, and that every key of an ended run expires; the workers' Prometheus counters and the
API's runs gauge against Redis, with no run id in any label.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random
import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.actions import MAX_LINKS, ActionRefused, Actions, Started
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.codec import unpack
from stepq.runtime.function_summaries import LIVE_STATUSES, function_summaries, live_counts
from stepq.runtime.queries import RunFilter, RunView, _run_view, count_runs, find_runs, run_ids
from stepq.runtime.run_status import TERMINAL as ENDS
from stepq.runtime.run_status import RunStatus
from stepq.runtime.shards import shard_of, shards
from stepq.runtime.timeline import get_timeline
from tests.helpers import REDIS_URL, StartWorkers, WorkerProcess, wait_for_runs
from tests.http_fixtures import free_port
from tests.torture.leftovers import global_leftovers, run_leftovers

APP = "t-operate"
MIXED, SLEEPY, CHILD = f"{APP}-mixed", f"{APP}-sleepy", f"{APP}-child"
# Short leases: the killed worker's jobs come back within a couple of seconds.
ENV = {"STEPQ_LEASE": "2", "STEPQ_TIMER_SWEEP": "2"}
RUN_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


@dataclasses.dataclass(slots=True)
class Record:
    run_id: str
    fn: str
    status: str
    created: int
    event_name: str
    raw: dict[bytes, bytes]


async def scan(redis: Redis) -> dict[str, Record]:
    """Every run record in the database, read by SCAN (not through any index)."""
    pattern = keys.RUN_SHAPES["run"].build("*", "*")
    ids = [k.decode().rsplit(":", 1)[1] async for k in redis.scan_iter(match=pattern, count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for run_id in ids:
            pipe.hgetall(keys.run(run_id))
        raws = await pipe.execute()
    out = {}
    for run_id, raw in zip(ids, raws, strict=True):
        if raw:
            text = {k.decode(): v.decode(errors="replace") for k, v in raw.items() if k in (b"fn", b"status", b"ev")}
            out[run_id] = Record(run_id, text["fn"], text["status"], int(raw[b"created"]), text.get("ev", ""), raw)
    return out


async def all_pages(redis: Redis, flt: RunFilter) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await find_runs(redis, flt, limit=37, cursor=cursor)
        ids += [view.run_id for view in page.runs]
        if page.cursor is None:
            return ids
        cursor = page.cursor


async def check_indexes(redis: Redis, runs: dict[str, Record]) -> list[str]:
    """The live counts, every filter's listing, run_ids and count_runs, against the scan."""
    problems = []
    # live counts: the counts hash of each shard is the scan's tally of runs not ended
    for shard in shards():
        held = {
            tuple(k.decode().rsplit("|", 1)): int(v)
            for k, v in (await redis.hgetall(keys.run_counts(shard))).items()  # type: ignore[misc]
        }
        tally = collections.Counter(
            (r.fn, r.status) for r in runs.values() if shard_of(r.run_id) == shard and r.status not in ENDS
        )
        if held != dict(tally):
            problems.append(f"shard {shard}: counts hash {held} != records {dict(tally)}")
    live = await live_counts(redis)
    for summary in await function_summaries(redis):
        mine = [r for r in runs.values() if r.fn == summary.slug]
        for status in LIVE_STATUSES:
            now = sum(1 for r in mine if r.status == status.value)
            if summary.counts[status.value] != now or live.get((summary.slug, status.value), 0) != now:
                problems.append(f"{summary.slug} {status.value}: summary {summary.counts} != {now} records")
        for status in (RunStatus.FAILED, RunStatus.COMPLETED):
            ended = sum(1 for r in mine if r.status == status.value)  # every run ended within the hour
            if summary.counts[f"{status.value}_last_hour"] != ended:
                problems.append(f"{summary.slug} {status.value}_last_hour: {summary.counts} != {ended} records")
    # every index zset holds exactly the runs its status, function or event name says, by creation
    # time (recent ends: by end time); runs_expiry lists every ended run once
    for shard in shards():
        mine = [r for r in runs.values() if shard_of(r.run_id) == shard]
        expected: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for r in mine:
            expected[keys.runs_by_status(shard, r.status)][r.run_id] = r.created
            expected[keys.runs_by_function_status(shard, r.fn, r.status)][r.run_id] = r.created
            if r.event_name:
                expected[keys.runs_by_event(shard, r.event_name)][r.run_id] = r.created
            if r.status in ENDS:
                expected[keys.recent_ends(shard, r.fn, r.status)][r.run_id] = int(r.raw[b"ended"])
        for pattern in (
            keys.runs_by_status(shard, "*"),
            keys.runs_by_function_status(shard, "*", "*"),
            keys.runs_by_event(shard, "*"),
            keys.recent_ends(shard, "*", "*"),
        ):
            async for key in redis.scan_iter(match=pattern):
                expected.setdefault(key.decode(), {})
        for key, members in expected.items():
            indexed = {m.decode(): int(s) for m, s in await redis.zrange(key, 0, -1, withscores=True)}
            if indexed != members:
                stray, absent = sorted(set(indexed) - set(members)), sorted(set(members) - set(indexed))
                problems.append(f"{key}: stray {stray[:3]}, absent {absent[:3]}, or other scores")
        expiring = [str(unpack(m)[0]) for m in await redis.zrange(keys.runs_expiry(shard), 0, -1)]
        ended_ids = sorted(r.run_id for r in mine if r.status in ENDS)
        if sorted(expiring) != ended_ids:
            problems.append(f"shard {shard} runs_expiry lists {len(expiring)} runs, {len(ended_ids)} ended")
    # every filter lists exactly the runs the scan says match, newest first, on pages and in bulk
    since = min((r.created for r in runs.values()), default=0) + 1500
    filters = [RunFilter(), RunFilter(since_ms=since), RunFilter(event_name="operate/mixed")]
    for fn in ("mixed", SLEEPY, CHILD, "nobody"):
        filters.append(RunFilter(function=fn))
        filters += [RunFilter(function=fn, status=s) for s in RunStatus]
    filters += [RunFilter(status=s) for s in RunStatus]
    filters += [RunFilter(status=RunStatus.FAILED, event_name="operate/mixed", until_ms=since)]
    for flt in filters:
        want = {r.run_id for r in runs.values() if flt.matches(_view(r))}
        listed = await all_pages(redis, flt)
        if len(listed) != len(set(listed)) or set(listed) != want:
            extra, missing = set(listed) - want, want - set(listed)
            problems.append(
                f"find_runs {flt}: {len(listed)} listed, extra {list(extra)[:3]}, missing {list(missing)[:3]}"
            )
        created = [runs[r].created for r in listed if r in runs]
        if created != sorted(created, reverse=True):
            problems.append(f"find_runs {flt}: not newest first")
        bulk = await run_ids(redis, flt, cap=10_000)
        if set(bulk) != want or len(bulk) != len(want):
            problems.append(f"run_ids {flt}: {len(bulk)} ids, {len(want)} match")
        if await count_runs(redis, flt, cap=10_000) != (len(bulk), False):
            problems.append(f"count_runs {flt}: {await count_runs(redis, flt, cap=10_000)} != {len(bulk)}")
    return problems


def _view(record: Record) -> RunView:
    return _run_view(record.run_id, record.raw)


async def check_runs(redis: Redis, runs: dict[str, Record], started: list[Started]) -> list[str]:
    """Links both ways, resumed prefixes, nothing stuck, nothing an ended run leaves behind."""
    problems = []
    for r in runs.values():
        links = {f: r.raw[f].decode() for f in (b"replay_of", b"forked_from") if f in r.raw}
        for field, source in links.items():
            old = runs.get(source)
            listed = old.raw.get(b"replays", b"").decode().split(",") if old else []
            if old is None or (r.run_id not in listed and len(listed) < MAX_LINKS):
                problems.append(f"{r.run_id} {field.decode()} {source}, which does not list it: {listed}")
        for made in filter(None, r.raw.get(b"replays", b"").decode().split(",")):
            back = runs.get(made)
            if back is None or r.run_id.encode() not in (back.raw.get(b"replay_of"), back.raw.get(b"forked_from")):
                problems.append(f"{r.run_id} lists {made} among its replays, which does not name it back")
    for s in started:
        new, old = runs.get(s.run_id), runs.get(s.source_run_id)
        if new is None or old is None:
            problems.append(f"{s}: a run is missing")
            continue
        link = b"forked_from" if s.kind == "resume" else b"replay_of"
        if new.raw.get(link, b"").decode() != s.source_run_id:
            problems.append(f"{s.run_id}: {link.decode()} is {new.raw.get(link)!r}, not {s.source_run_id}")
        if s.kind != "resume":
            continue
        old_stack, new_stack = await _stack(redis, s.source_run_id), await _stack(redis, s.run_id)
        prefix = old_stack[: s.kept_steps]
        if new_stack[: s.kept_steps] != prefix or s.from_step in prefix or len(old_stack) < s.kept_steps:
            problems.append(f"{s}: kept {new_stack[: s.kept_steps]} of {old_stack}")
        if prefix:
            old_memo = await redis.hmget(keys.memo(s.source_run_id), prefix)  # type: ignore[misc]
            new_memo = await redis.hmget(keys.memo(s.run_id), prefix)  # type: ignore[misc]
            if old_memo != new_memo or None in new_memo:
                problems.append(f"{s}: the kept memo values differ from the old run's")
        if new.raw.get(b"from_step", b"").decode() != s.from_step:
            problems.append(f"{s}: from_step {new.raw.get(b'from_step')!r}")
    for r in runs.values():
        async with redis.pipeline(transaction=False) as pipe:
            pipe.smembers(keys.pending(r.run_id))
            pipe.smembers(keys.jobs(r.run_id))
            pending, jobs = await pipe.execute()
        if r.status in ENDS:
            problems += [f"{r.run_id} ({r.fn}, {r.status}): {item}" for item in run_leftovers(r.raw, pending, jobs)]
            continue
        # not ended: only sleepers are left at a settled point, each with its wake-up timer
        timer = r.raw.get(b"timer")
        due = await redis.zscore(keys.timers(shard_of(r.run_id)), timer) if timer else None
        if r.fn != SLEEPY or r.status != "sleeping" or due is None:
            problems.append(f"{r.run_id} ({r.fn}) is {r.status} with timer {timer!r} (due {due}), jobs {jobs}")
    return problems


async def _stack(redis: Redis, run_id: str) -> list[str]:
    return [k.decode() for k in await redis.lrange(keys.stack(run_id), 0, -1)]  # type: ignore[misc]


async def keys_without_ttl(redis: Redis, ended: set[str]) -> tuple[list[str], int]:
    """Keys that never expire and name an ended run (its records, jobs, locks: anything), and how
    many keys name an ended run."""
    found, named = [], 0
    async for key in redis.scan_iter(count=1000):
        if set(RUN_ID.findall(key.decode(errors="replace"))) & ended:
            named += 1
            if await redis.ttl(key) == -1:
                found.append(key.decode(errors="replace"))
    return found, named


async def settle(redis: Redis, timeout: float = 45.0) -> dict[str, Record]:
    """Wait until every run has ended, but the sleepers (sleeping an hour); the scan then."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await scan(redis)
        moving = [r for r in runs.values() if r.status not in ENDS and not (r.fn == SLEEPY and r.status == "sleeping")]
        busy = [k async for k in redis.scan_iter(match=keys.ARQ_IN_PROGRESS + "*")]
        if not moving and not busy:
            return runs
        if time.monotonic() > deadline:
            detail = [(r.run_id, r.fn, r.status, sorted(k.decode() for k in r.raw)) for r in moving[:5]]
            raise AssertionError(f"{len(moving)} runs still moving after {timeout} s: {detail}")
        await asyncio.sleep(0.2)


async def test_actions_and_indexes_hold_under_concurrency_and_a_killed_worker(
    redis: Redis, start_workers: StartWorkers, sender: stepq.Client, tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(3)]  # the two workers' metrics, and the replacement's
    workers = [start_workers("operate", 1, {**ENV, "STEPQ_METRICS_PORT": str(port)})[0] for port in ports[:2]]
    scraped: list[Samples] = []  # the killed worker's last scrape, taken just before the kill
    actions = Actions.on(redis)
    rng = random.Random(12)
    began_ms = int(time.time() * 1000)
    # the runs the bulk replays act on: the failed mixed runs sent in the first 2.5 s (their
    # replays, created later, are not replayed again)
    failed_first = RunFilter(function="mixed", status=RunStatus.FAILED, until_ms=began_ms + 2500)
    sleepers = RunFilter(function="sleepy", status=RunStatus.SLEEPING)
    started: list[Started] = []
    outcomes: collections.Counter[str] = collections.Counter()
    sending = asyncio.Event()
    refusals: dict[str, str] = {}

    async def send(who: int) -> None:
        for i in range(12):
            if i % 3 == 0:
                event = stepq.Event(name="operate/sleepy", data={"who": who, "n": i})
            else:
                event = stepq.Event(name="operate/mixed", data={"who": who, "n": i, "doom": i % 3 == 1})
            await sender.send(event)
            await asyncio.sleep(0.3)

    replacements: list[WorkerProcess] = []

    async def kill_and_replace() -> None:
        await asyncio.sleep(1.2)
        scraped.append(await scrape(ports[0]))  # what it counted (it may end a run or two more)
        workers[0].proc.kill()  # SIGKILL: its leased jobs come back when the leases lapse
        workers[0].proc.wait()
        env = {**os.environ, "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", "STEPQ_REDIS_URL": REDIS_URL, **ENV}
        env["STEPQ_METRICS_PORT"] = str(ports[2])
        replacements.append(WorkerProcess("operate", 9, tmp_path, env))
        while not any(entry.get("event") == "worker.started" for entry in replacements[0].logs()):
            assert replacements[0].alive(), replacements[0].stderr()
            await asyncio.sleep(0.05)

    async def bulk_rounds() -> None:
        # Concurrent changes, accounted: a run leaves "failed" or "sleeping" only through these
        # rounds (a sleeper sleeps an hour; only this task cancels sleepers; a failed run stays failed), and
        # sends and forks only add runs to those indexes. So what a preview counted is still there
        # when the bulk selects: preview.count <= matched, and nothing is skipped.
        for _ in range(3):
            await asyncio.sleep(1.0)
            for flt, act in ((failed_first, actions.bulk_replay), (sleepers, actions.bulk_cancel)):
                preview = await actions.preview(flt)
                result = await act(flt)
                assert preview.count <= result.matched, (flt, preview, result)
                assert (result.done, result.skipped) == (result.matched, {}), (flt, result)
                pairs = zip(result.done_run_ids, result.new_run_ids, strict=result.action == "replay")
                started.extend(Started(new, old, "replay") for old, new in pairs)
                outcomes[f"bulk {result.action}"] += result.done

    async def fork(http: httpx.AsyncClient, run_id: str, kind: str) -> None:
        """A replay or a resume, by the API (odd turns) or by ``Actions``; a refusal is counted."""
        via_api = rng.random() < 0.5
        try:
            if via_api:
                path, body = ("replay", {}) if kind == "replay" else ("resume", {"step": kind})
                answer = await http.post(f"/v0/runs/{run_id}/{path}", json=body)
                assert answer.status_code in (200, 400, 409), (answer.status_code, answer.text)
                if answer.status_code != 200:
                    outcomes[f"{kind} refused {answer.status_code}"] += 1
                    refusals.setdefault(f"{kind} {answer.status_code}", answer.json()["error"])
                    return
                started.append(Started(**answer.json()))
            else:
                started.append(await (actions.replay(run_id) if kind == "replay" else actions.resume(run_id, kind)))
            outcomes[f"{kind} done"] += 1
        except ActionRefused as refused:
            outcomes[f"{kind} refused {refused.status}"] += 1
            refusals.setdefault(f"{kind} {refused.status}", str(refused))

    async def race_the_cancels(http: httpx.AsyncClient) -> None:
        # Replays and resumes of the sleepers the bulk cancel is cancelling and of failed runs, and
        # cancels of mixed runs on their way (at any step: a parallel group, a sleep, a wait, an
        # invoke), half of them through the HTTP API.
        while sending.is_set():
            targets = await run_ids(redis, RunFilter(function="sleepy"), cap=50)
            targets += await run_ids(redis, RunFilter(function="mixed", status=RunStatus.FAILED), cap=20)
            for run_id in rng.sample(targets, min(6, len(targets))):
                await fork(http, run_id, rng.choice(("replay", "first", "long", "nap", "last")))
            # an invoked child's replay: a run of its own, its parent (ended or not) takes nothing from it
            children = await run_ids(redis, RunFilter(function="child", status=RunStatus.COMPLETED), cap=20)
            if children:
                await fork(http, rng.choice(children), "replay")
            going = [
                run_id
                for status in (RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING)
                for run_id in await run_ids(redis, RunFilter(function="mixed", status=status), cap=20)
            ]
            if going and rng.random() < 0.5:
                victim = rng.choice(going)
                answer = await http.post(f"/v0/runs/{victim}/cancel", json={"reason": "the racer"})
                assert answer.status_code in (200, 409), answer.text  # 409: it ended meanwhile
                outcomes[f"cancel {answer.status_code}"] += 1
            await asyncio.sleep(0.15)

    sending.set()
    api = ApiServer(REDIS_URL, settings=ApiSettings(dev=True))
    try:
        with api:
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as http, asyncio.TaskGroup() as group:
                racer = group.create_task(race_the_cancels(http))  # a failure cancels the others
                await asyncio.gather(*(send(who) for who in range(3)), kill_and_replace(), bulk_rounds())
                sending.clear()
                await racer
            for n in range(2):  # sleepers the bulk rounds did not see: counted live, then cancelled
                await sender.send(stepq.Event(name="operate/sleepy", data={"who": "late", "n": n}))
            runs = await check_the_end(redis, actions, started, failed_first, sleepers)
            assert all(w.alive() for w in [*workers[1:], *replacements]), "a worker died on its own"
            counted = [*scraped, await scrape(ports[1]), await scrape(ports[2])]
            problems = await check_metrics(redis, runs, started, counted, await scrape(api.url))
            problems += await check_timelines(redis, runs, started)
            assert not problems, "\n".join(problems)
    finally:
        for worker in replacements:
            worker.stop()
    print("\noutcomes:", dict(outcomes), refusals)


async def check_the_end(
    redis: Redis, actions: Actions, started: list[Started], failed_first: RunFilter, sleepers: RunFilter
) -> dict[str, Record]:
    assert any(s.kind == "resume" for s in started) and any(s.kind == "replay" for s in started), started

    # settled (sleepers sleep): every invariant against the scan, sleepers counted live
    runs = await settle(redis)
    assert any(r.status == "sleeping" for r in runs.values()), "no sleeper left to count live"
    problems = await check_indexes(redis, runs) + await check_runs(redis, runs, started)
    assert not problems, "\n".join(problems[:30])

    # quiet: a preview counts exactly what the bulk action then does
    for flt, act in ((failed_first, actions.bulk_replay), (sleepers, actions.bulk_cancel)):
        preview = await actions.preview(flt)
        result = await act(flt)
        assert preview.count == result.matched == result.done > 0 and not preview.capped, (flt, preview, result)
        pairs = zip(result.done_run_ids, result.new_run_ids, strict=result.action == "replay")
        started += [Started(new, old, "replay") for old, new in pairs]

    runs = await settle(redis)
    await wait_for_runs(redis, list(runs), timeout=5)  # no sleeper is left: all ended
    problems = await check_indexes(redis, runs) + await check_runs(redis, runs, started)
    problems += await global_leftovers(redis, ())
    forever, named = await keys_without_ttl(redis, set(runs))
    assert named >= 3 * len(runs), f"the key scan found {named} keys of {len(runs)} runs"
    problems += [f"never expires: {key}" for key in forever]
    assert not problems, "\n".join(problems[:30])
    statuses = collections.Counter((r.fn, r.status) for r in runs.values())
    print("runs:", dict(statuses))
    return runs


async def check_timelines(redis: Redis, runs: dict[str, Record], started: list[Started]) -> list[str]:
    """Every run's timeline (runtime/timeline.py) against its record: an item for every committed
    step (those a resumed run kept too), each step item with an attempt at least, ``failed_at`` with
    the run's error for a failed run."""
    problems = []
    kept = {s.run_id: s.kept_steps for s in started if s.kind == "resume"}
    for r in runs.values():
        timeline = await get_timeline(redis, r.run_id)
        if timeline is None:
            problems.append(f"{r.run_id} ({r.fn}, {r.status}): no timeline")
            continue
        items = {item.key: item for item in timeline.items}
        stack = await _stack(redis, r.run_id)
        steps: dict[bytes, bytes] = await redis.hgetall(keys.steps(r.run_id))  # type: ignore[misc]
        for position, key in enumerate(stack):
            item = items.get(key)
            if item is None:
                what = "kept from the old run" if position < kept.get(r.run_id, 0) else "committed"
                problems.append(f"{r.run_id} ({r.fn}): no timeline item for step {key} ({what})")
                continue
            if f"{key}:execs".encode() in steps and item.kind == "step" and not item.attempts:
                what = "kept from the old run" if position < kept.get(r.run_id, 0) else "committed"
                problems.append(f"{r.run_id} ({r.fn}): step {item.name} ({what}) has no attempt")
        # A step's NonRetriableError fails the run from the function's code (sdk/step.py), so the
        # runtime never hears which step raised it: failed_at names no step for these runs (a gap
        # the qa report gives the integrator); it must still carry the run's error.
        if r.status == "failed":
            failed_at = timeline.failed_at
            if failed_at is None or failed_at.error != timeline.run.error:
                problems.append(f"{r.run_id} ({r.fn}): failed, failed_at is {failed_at}")
    return problems


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(where: int | str) -> Samples:
    """A /metrics answer's samples by (name, labels): a worker's (its port) or the API's (its URL)."""
    url = f"http://127.0.0.1:{where}/metrics" if isinstance(where, int) else f"{where}/metrics"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, got), v in samples.items() if n == name and set(labels.items()) <= got)


async def check_metrics(
    redis: Redis, runs: dict[str, Record], started: list[Started], workers: list[Samples], api: Samples
) -> list[str]:
    """The workers' counters against Redis, and the API's runs gauge against the scan.

    The killed worker's counters are its last scrape, taken just before the SIGKILL: what it did
    between the two is lost with it, so the workers' sums may fall short of Redis by a little (at
    most SLACK), never exceed it (a duplicate execution's refused write is not counted)."""
    slack = 3
    problems = []
    labels = {v for samples in [*workers, api] for (_, got) in samples for k, v in got if k != "le"}
    if ids := [v for v in labels if RUN_ID.search(v)]:
        problems.append(f"run ids in metric labels: {ids[:3]}")
    # runs the workers ended: every completed and failed run here (cancels came from the API and Actions)
    for fn in (MIXED, CHILD):
        for status in ("completed", "failed"):
            want = sum(1 for r in runs.values() if r.fn == fn and r.status == status)
            got = sum(total(s, "stepq_function_runs_ended_total", function=fn, status=status) for s in workers)
            if not want - slack <= got <= want:
                problems.append(f"{fn} runs ended {status}: workers counted {got}, Redis holds {want}")
    # steps the workers completed: the step results committed, but those a resumed run kept
    kept = {s.run_id: s.kept_steps for s in started if s.kind == "resume"}
    for fn in (MIXED, CHILD, SLEEPY):
        want = 0
        for r in (r for r in runs.values() if r.fn == fn):
            stack = await _stack(redis, r.run_id)
            steps: dict[bytes, bytes] = await redis.hgetall(keys.steps(r.run_id))  # type: ignore[misc]
            want += sum(1 for key in stack[kept.get(r.run_id, 0) :] if f"{key}:execs".encode() in steps)
        got = sum(total(s, "stepq_steps_completed_total", function=fn) for s in workers)
        print(f"{fn}: workers completed {got:.0f} steps, Redis holds {want}")
        if not want - slack <= got <= want or not want:
            problems.append(f"{fn} steps completed: workers counted {got}, Redis holds {want} step results")
    # the API's runs gauge is the scan's tally
    tally = collections.Counter((r.fn, r.status) for r in runs.values())
    for fn in (MIXED, CHILD, SLEEPY):
        for status in RunStatus:
            got = total(api, "stepq_runs", function=fn, status=status.value)
            if got != tally[fn, status.value]:
                problems.append(
                    f"stepq_runs{{{fn}, {status.value}}} is {got}, the records say {tally[fn, status.value]}"
                )
    return problems
