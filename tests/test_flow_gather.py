"""Debounce and event batching (issue 11), with Inngest's semantics, on real Redis and real workers.

Debounce: a burst gives one run with the last event, started at least ``period`` after it; a
stream longer than ``timeout`` gives a run by the timeout (and the rest of the stream a new one);
keys debounce apart; an event older than the run's is ignored. Batching: sizes and the timeout,
keys, ``if`` (unbatched events run at once), concurrent senders, a batch full as its timeout comes,
workers SIGKILLed while batches are pending: every event lands in exactly one run, and every run
starts once. The same core checks run for functions served by the official ``inngest`` SDK
(tests/apps/official_app.py), whose events reach ``ctx.events`` over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime import keys
from stepq.runtime.codec import unpack
from stepq.runtime.queries import RunView
from stepq.runtime.registry import Registry
from stepq.runtime.shards import shard_of
from tests.helpers import REDIS_URL, TERMINAL, StartWorkers, read_lines, runs_of, use_shards
from tests.http_fixtures import Stack, dev_stack, post_events, stepq_cli

APP = "t-gather"


def sent_ms() -> int:
    """Now, as the sender stamps it (whole milliseconds, rounded down): a time measured in the test
    before a send is never after the send's own."""
    return int(time.time() * 1000)


def fn(name: str) -> str:
    return f"{APP}-{name}"


async def send(sender: stepq.Client, name: str, data: dict[str, Any], ts: int | None = None) -> str:
    [event_id] = await sender.send(stepq.Event(name=name, data=data, ts=ts or 0))
    return event_id


async def settled_runs(redis: Redis, function: str, events: int, timeout: float = 60.0) -> list[RunView]:
    """The runs of ``function`` once they hold ``events`` events between them and all ended."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await runs_of(redis, function)
        held = sum(len(view.event_ids) for view in runs)
        if held >= events and runs and all(view.status in TERMINAL for view in runs):
            return [view for view in runs]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{function}: {held} of {events} events in runs {[(v.run_id, v.status) for v in runs]}"
            )
        await asyncio.sleep(0.05)


def batch_of(view: RunView) -> list[Any]:
    """The ``i`` of each event a completed run saw, in order."""
    assert view.status == "completed", f"run {view.run_id} {view.status}: {view.error}"
    return [data.get("i") for data in view.output["events"]]


def each_once(runs: Sequence[RunView], expected: Sequence[Any]) -> None:
    """Every expected event is in exactly one run (its output and its record's event ids agree)."""
    seen = Counter(i for view in runs for i in batch_of(view))
    duplicated = {i: n for i, n in seen.items() if n > 1}
    assert not duplicated, f"events in more than one run: {duplicated}"
    assert sorted(seen) == sorted(expected), (
        f"missing {set(expected) - set(seen)}, unexpected {set(seen) - set(expected)}"
    )
    for view in runs:
        assert len(view.event_ids) == len(view.output["events"]), view


# -- debounce ----------------------------------------------------------------------------------------


async def test_a_burst_is_debounced_into_one_run_with_the_last_event_a_period_after_it(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    start_workers("gather")
    ids = []
    for i in range(5):
        last_sent = sent_ms() / 1000
        ids.append(await send(sender, "gather/debounce", {"k": "a", "i": i}))
        await asyncio.sleep(0.2)
    [pending] = await runs_of(redis, fn("debounced"))
    if pending.status == "queued":  # a slow machine may have started it already
        assert pending.waiting is not None and pending.waiting.startswith("debounced "), pending
        assert '(key "a")' in pending.waiting, pending
    [view] = await settled_runs(redis, fn("debounced"), 1)
    assert view.output["event"] == {"k": "a", "i": 4}
    assert batch_of(view) == [4]
    assert view.event_ids == [ids[-1]]
    assert view.output["started"] >= last_sent + 1.0, "the run started before the period passed after the last event"
    assert view.gathered is not None and view.gathered["events"] == 5 and view.gathered["kind"] == "debounce"
    assert view.waiting is None


async def test_debounce_keys_debounce_apart_and_an_older_event_is_ignored(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    start_workers("gather")
    now = int(time.time() * 1000)
    await send(sender, "gather/debounce", {"k": "a", "i": 1}, ts=now)
    await send(sender, "gather/debounce", {"k": "b", "i": 2}, ts=now)
    await send(sender, "gather/debounce", {"k": "a", "i": 3}, ts=now + 5)
    # older than the run's event (Inngest PR #975): it neither replaces it nor starts a run
    await send(sender, "gather/debounce", {"k": "a", "i": 4}, ts=now - 60_000)
    await send(sender, "gather/debounce", {"k": "b", "i": 5}, ts=now + 5)
    runs = await settled_runs(redis, fn("debounced"), 2)
    by_key = {view.output["event"]["k"]: view for view in runs}
    assert sorted(by_key) == ["a", "b"] and len(runs) == 2, runs
    assert batch_of(by_key["a"]) == [3] and batch_of(by_key["b"]) == [5]
    assert by_key["a"].gathered is not None and by_key["a"].gathered["ignored"] == 1


async def test_a_stream_longer_than_the_timeout_starts_a_run_by_the_timeout(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    """period 2 s, timeout 3 s, an event every 0.4 s for 6 s: without the cap one run would start
    2 s after the stream; with it the first run fires 3 s after the first event, mid-stream, and
    the stream's later events debounce into the next run."""
    start_workers("gather")
    first_sent = sent_ms() / 1000
    sent = 0
    while time.time() < first_sent + 6.0:
        await send(sender, "gather/debounce.capped", {"i": sent})
        sent += 1
        await asyncio.sleep(0.4)
    runs = await settled_runs(redis, fn("debounced-capped"), 2)
    runs.sort(key=lambda v: v.created_ms)
    assert len(runs) >= 2, f"one run for a {time.time() - first_sent:.1f} s stream: the timeout did not cap it"
    first = runs[0]
    assert first.output["started"] >= first_sent + 3.0
    assert batch_of(first)[0] < sent - 1, "the first run has the stream's last event: it waited for the stream's end"
    assert batch_of(runs[-1]) == [sent - 1]


# -- batching ----------------------------------------------------------------------------------------


async def test_25_events_make_batches_of_10_10_and_5_the_last_after_the_timeout(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    start_workers("gather")
    sent_at = sent_ms() / 1000
    await sender.send([stepq.Event(name="gather/batch", data={"i": i}) for i in range(25)])
    runs = await settled_runs(redis, fn("batched"), 25)
    sizes = sorted(len(batch_of(view)) for view in runs)
    assert sizes == [5, 10, 10], sizes
    each_once(runs, range(25))
    for view in runs:
        events = batch_of(view)
        assert events == sorted(events), "a batch's events are in the order they were sent"
        assert view.output["event"] == view.output["events"][0], "ctx.event is the batch's first event"
    [last] = [view for view in runs if len(batch_of(view)) == 5]
    assert batch_of(last) == [20, 21, 22, 23, 24]
    assert last.output["started"] >= sent_at + 2.0, "the partial batch started before its timeout"


async def test_batch_keys_batch_apart_and_events_failing_if_run_unbatched_at_once(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    """An event without the key's field batches under the null key; one whose ``if`` cannot be
    evaluated (no such field) runs unbatched, as a trigger expression that fails does not match."""
    start_workers("gather")
    for i, k in enumerate("aabaab"):
        await send(sender, "gather/batch.keyed", {"k": k, "i": i})
    await send(sender, "gather/batch.keyed", {"i": 6})
    for i in range(5):
        await send(sender, "gather/batch.if", {"batch": i % 2 == 0, "i": i})
    await send(sender, "gather/batch.if", {"i": 5})
    keyed = await settled_runs(redis, fn("batched-keyed"), 7)
    got = sorted((str(view.output["events"][0].get("k")), batch_of(view)) for view in keyed)
    assert got == [("None", [6]), ("a", [0, 1, 3]), ("a", [4]), ("b", [2, 5])], got
    for view in keyed:
        assert {e.get("k") for e in view.output["events"]} == {view.output["events"][0].get("k")}
    unbatched = await settled_runs(redis, fn("batched-if"), 6)
    got_if = sorted(batch_of(view) for view in unbatched)
    assert got_if == [[0, 2, 4], [1], [3], [5]], got_if
    for view in unbatched:
        if len(view.event_ids) == 1:
            assert view.gathered is None, "an event failing `if` ran in a batch"


@pytest.mark.parametrize("shard_count", [1, 4])
async def test_concurrent_senders_lose_no_event_and_duplicate_none(
    start_workers: StartWorkers, redis: Redis, shard_count: int
) -> None:
    await use_shards(redis, shard_count)  # 4: runs placed over shards (runtime/placement.py)
    start_workers("gather", n=2)
    senders = [stepq.Client(f"sender-{n}", redis_url=REDIS_URL) for n in range(4)]
    try:

        async def burst(n: int, client: stepq.Client) -> None:
            for j in range(40):
                await client.send(stepq.Event(name="gather/batch", data={"i": n * 1000 + j}))
                if j % 7 == 0:
                    await asyncio.sleep(random.random() * 0.05)

        await asyncio.gather(*(burst(n, client) for n, client in enumerate(senders)))
    finally:
        for client in senders:
            await client.aclose()
    runs = await settled_runs(redis, fn("batched"), 160)
    each_once(runs, [n * 1000 + j for n in range(4) for j in range(40)])
    assert all(len(view.event_ids) <= 10 for view in runs)
    assert sum(1 for view in runs if len(view.event_ids) == 10) >= 14, [len(v.event_ids) for v in runs]


async def test_a_batch_full_as_its_timeout_comes_starts_once(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis, tmp_path: Path
) -> None:
    """max 2, timeout 1 s: the second event of each pair comes about when the first's timeout does.
    Whichever wins, each event is in one run and each run's code starts once."""
    start_workers("gather", n=2)
    log = tmp_path / "pairs.log"
    events = []
    for pair in range(6):
        first = 2 * pair
        await send(sender, "gather/batch.pairs", {"i": first, "log": str(log)})
        await asyncio.sleep(0.97 + random.random() * 0.06)
        await send(sender, "gather/batch.pairs", {"i": first + 1, "log": str(log)})
        events += [first, first + 1]
    runs = await settled_runs(redis, fn("batched-pairs"), len(events))
    each_once(runs, events)
    starts = Counter(json.loads(line)["run"] for line in read_lines(log))
    assert starts == Counter({view.run_id: 1 for view in runs}), starts


async def test_workers_sigkilled_while_batches_are_pending_lose_no_event(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    first, second = start_workers("gather", n=2)
    await sender.send([stepq.Event(name="gather/batch", data={"i": i}) for i in range(15)])
    first.proc.send_signal(signal.SIGKILL)
    for i in range(15, 22):
        await send(sender, "gather/batch", {"i": i})
    second.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    second.proc.wait(timeout=10)
    pending = [view for view in await runs_of(redis, fn("batched")) if view.status not in TERMINAL]
    assert pending, "no batch was pending when the workers died"
    start_workers("gather")
    runs = await settled_runs(redis, fn("batched"), 22, timeout=90)
    each_once(runs, range(22))


async def test_a_start_timeout_counts_from_when_the_batch_fired(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    start_workers("gather")
    await sender.send([stepq.Event(name="gather/batch.start-timeout", data={"i": i}) for i in range(2)])
    [view] = await settled_runs(redis, fn("batched-start-timeout"), 2)
    assert batch_of(view) == [0, 1]


async def test_batched_and_debounced_events_reach_the_function_byte_for_byte(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    """Appending an event to a batch never decodes it (a Lua msgpack round trip would turn an empty
    map into an empty list): 18 events, past the 15 a short msgpack array holds, arrive unchanged."""
    start_workers("gather")

    def data(i: int) -> dict[str, Any]:
        return {"i": i, "empty": {}, "list": [], "nested": {"a": {}, "b": [[], {}]}, "big": 2**62 + i, "f": 1.5,
                "s": "ünï" * i, "none": None, "t": True}  # fmt: skip

    await sender.send([stepq.Event(name="gather/batch.wide", data=data(i)) for i in range(18)])
    await send(sender, "gather/debounce", {**data(99), "k": "exact"})
    [batch] = await settled_runs(redis, fn("batched-wide"), 18)
    assert batch.output["events"] == [data(i) for i in range(18)]
    [debounced] = await settled_runs(redis, fn("debounced"), 1)
    assert debounced.output["events"] == [{**data(99), "k": "exact"}]


async def test_a_cancelled_pending_batch_runs_nothing_and_the_next_event_opens_a_new_one(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    start_workers("gather")
    for i in range(3):
        await send(sender, "gather/batch", {"i": i})
    [pending] = await runs_of(redis, fn("batched"))
    assert await sender.cancel(pending.run_id, reason="not this batch")
    await send(sender, "gather/batch", {"i": 3})
    runs = await settled_runs(redis, fn("batched"), 4)
    done = [view for view in runs if view.status == "completed"]
    assert [view.status for view in runs if view.run_id == pending.run_id] == ["cancelled"]
    assert [batch_of(view) for view in done] == [[3]]


# -- when a run is open: decided in the script that stores the event -----------------------------------


async def register_gather_app(redis: Redis) -> None:
    """Register tests/apps/gather.py's functions as its worker would, without a worker: runs wait."""
    from tests.apps.gather import client

    await Registry(redis).register_app(APP, [f.config() for f in client.functions.values()])


async def first_job(redis: Redis, run_id: str) -> tuple[str, float | None]:
    job_id = f"{run_id}:p0:a0"
    return job_id, await redis.zscore(keys.queue(shard_of(run_id), APP), job_id)


async def gathered_ids(redis: Redis, function: str) -> dict[str, list[Any]]:
    """Each run's events' ``i``, read from the events the run will start with."""
    out = {}
    for view in await runs_of(redis, function):
        blob = await redis.get(keys.events(view.run_id))
        assert blob is not None
        out[view.run_id] = [e["data"]["i"] for e in unpack(blob)]
    return out


async def test_a_batch_takes_events_only_while_its_job_waits_unclaimed_and_not_due(
    sender: stepq.Client, redis: Redis
) -> None:
    """Whatever a worker does between two events (claims the job, or lets its time come), the next
    event joins the run only if it will still see it: once the job is claimed or due, it opens a new
    run. So no event is in a run that started without it, and a batch's job is claimed once."""
    await register_gather_app(redis)
    await send(sender, "gather/batch", {"i": 0})
    [claimed] = await runs_of(redis, fn("batched"))
    job_id, score = await first_job(redis, claimed.run_id)
    assert score is not None and claimed.gathered is not None and score == claimed.gathered["until_ms"]
    await redis.set(keys.in_progress(job_id), "a-worker's-token", px=60_000)  # as a claim does
    await send(sender, "gather/batch", {"i": 1})
    [due] = [v for v in await runs_of(redis, fn("batched")) if v.run_id != claimed.run_id]
    due_job, _ = await first_job(redis, due.run_id)
    await redis.zadd(keys.queue(shard_of(due.run_id), APP), {due_job: time.time() * 1000 - 1})  # its time came
    for i in range(2, 13):
        await send(sender, "gather/batch", {"i": i})
    runs = await gathered_ids(redis, fn("batched"))
    assert runs[claimed.run_id] == [0] and runs[due.run_id] == [1]
    rest = sorted(ids for run_id, ids in runs.items() if run_id not in (claimed.run_id, due.run_id))
    assert rest == [list(range(2, 12)), [12]], rest
    # the full batch's job is due now; the next one waits for its timeout
    for run_id, ids in runs.items():
        _, score = await first_job(redis, run_id)
        if ids == list(range(2, 12)):
            assert score is not None and score <= time.time() * 1000
        if ids == [12]:
            assert score is not None and score > time.time() * 1000


async def test_a_debounced_event_moves_the_waiting_job_later_and_replaces_the_event(
    sender: stepq.Client, redis: Redis
) -> None:
    await register_gather_app(redis)
    await send(sender, "gather/debounce", {"k": "m", "i": 0})
    [run] = await runs_of(redis, fn("debounced"))
    _, before = await first_job(redis, run.run_id)
    await asyncio.sleep(0.05)
    sent = sent_ms() / 1000
    await send(sender, "gather/debounce", {"k": "m", "i": 1})
    [again] = await runs_of(redis, fn("debounced"))
    _, after = await first_job(redis, run.run_id)
    assert again.run_id == run.run_id and before is not None and after is not None
    assert after >= round(sent * 1000) + 1000 > before
    assert (await gathered_ids(redis, fn("debounced")))[run.run_id] == [1]
    assert again.gathered is not None and again.gathered["until_ms"] == after and again.gathered["events"] == 2


# -- why a run waits: the CLI ------------------------------------------------------------------------


async def test_stepq_run_and_runs_say_why_a_gathered_run_waits(
    start_workers: StartWorkers, sender: stepq.Client, redis: Redis
) -> None:
    """The app's worker registered it and stopped: the runs wait (no worker would start them)."""
    [worker] = start_workers("gather")
    worker.stop()
    for i in range(3):
        await send(sender, "gather/batch", {"i": i})
    await send(sender, "gather/debounce", {"k": "doc-7", "i": 9})
    [batch] = await runs_of(redis, fn("batched"))
    [debounce] = await runs_of(redis, fn("debounced"))
    shown = stepq_cli("run", batch.run_id)
    assert shown.returncode == 0, shown.stderr
    # (the CLI takes a while to start: the run's time may have come meanwhile, which it says too)
    assert re.search(r"waiting   (batching 3/10 until 20|batch of 3/10: fired at 20)", shown.stdout), shown.stdout
    shown = stepq_cli("run", debounce.run_id)
    assert re.search(r'waiting   debounced (until 20.*\(key "doc-7"\)|\(key "doc-7"\): fired at 20)', shown.stdout), (
        shown.stdout
    )
    listed = stepq_cli("runs")
    assert re.search(r"(batching 3/10 until|batch of 3/10: fired)", listed.stdout), listed.stdout
    assert "  debounced " in listed.stdout, listed.stdout
    # the queue holds each run's one first job, delayed to when it fires: nothing polls meanwhile
    for view in (batch, debounce):
        score = await redis.zscore(keys.queue(shard_of(view.run_id), APP), f"{view.run_id}:p0:a0")
        assert score is not None and view.gathered is not None and score == view.gathered["until_ms"]
    # its time came and no worker took it: it says so
    assert batch.gathered is not None
    await asyncio.sleep(max(0.0, batch.gathered["until_ms"] / 1000 - time.time()) + 0.05)
    shown = stepq_cli("run", batch.run_id)
    assert "waiting   batch of 3/10: fired at 20" in shown.stdout, shown.stdout
    assert "waiting for a worker" in shown.stdout, shown.stdout


# -- served functions (the official inngest SDK) -------------------------------------------------------


@pytest.fixture(scope="class")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``stepq api --dev``, ``stepq worker --http`` and the official-SDK app, synced."""
    with dev_stack(tmp_path_factory.mktemp("gather-served"), "tests.apps.official_app:app") as stack:
        yield stack


class TestServedByTheOfficialSdk:
    async def test_a_served_debounce_runs_once_with_the_last_event_and_the_api_says_why_it_waits(
        self, served: Stack, db: Redis
    ) -> None:
        ids = []
        for i in range(4):
            last_sent = sent_ms() / 1000
            ids += await post_events(served.api_url, [{"name": "compat/debounce", "data": {"k": "s", "i": i}}])
            if i == 1:  # another key debounces apart
                await post_events(served.api_url, [{"name": "compat/debounce", "data": {"k": "t", "i": 10}}])
            await asyncio.sleep(0.2)
        debounced = await runs_of(db, "compat-debounced")
        [pending] = [view for view in debounced if view.gathered and view.gathered["key"] == '"s"']
        async with httpx.AsyncClient(timeout=30) as http:
            shown = (await http.get(f"{served.api_url}/v0/runs/{pending.run_id}")).json()
        assert shown["gathered"]["kind"] == "debounce" and shown["gathered"]["key"] == '"s"', shown
        if shown["status"] == "queued":
            assert shown["waiting"].startswith("debounced "), shown
        try:
            runs = await settled_runs(db, "compat-debounced", 2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{served.output()}") from None
        assert sorted(batch_of(view) for view in runs) == [[3], [10]]
        [view] = [view for view in runs if view.run_id == pending.run_id]
        assert view.status == "completed", f"{view.error}\n{served.output()}"
        assert view.output["events"] == [{"k": "s", "i": 3}] and view.output["event"] == {"k": "s", "i": 3}
        assert view.event_ids == [ids[-1]]
        assert view.output["started"] >= last_sent + 1.0

    async def test_served_batches_reach_ctx_events_over_http_by_size_timeout_and_key(
        self, served: Stack, db: Redis
    ) -> None:
        sent_at = sent_ms() / 1000
        events = [{"name": "compat/batch", "data": {"k": k, "i": i}} for i, k in enumerate("abaabba")]
        events.append({"name": "compat/batch", "data": {"k": "solo", "i": 7}})  # `if` false: unbatched
        await post_events(served.api_url, events)
        try:
            runs = await settled_runs(db, "compat-batched", len(events))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{served.output()}") from None
        each_once(runs, range(len(events)))
        got = sorted((view.output["events"][0]["k"], batch_of(view)) for view in runs)
        assert got == [("a", [0, 2, 3]), ("a", [6]), ("b", [1, 4, 5]), ("solo", [7])], got
        [partial] = [view for view in runs if batch_of(view) == [6]]
        [solo] = [view for view in runs if batch_of(view) == [7]]
        assert solo.gathered is None, "an event failing `if` ran in a batch"
        assert partial.output["started"] >= sent_at + 1.0, "the partial batch started before its timeout"
        for view in runs:
            assert view.output["event"] == view.output["events"][0]
