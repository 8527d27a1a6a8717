"""The outbox (runtime/outbox.py): what one shard's script makes other shards do, delivered once.

On one Redis holding ``stepq:{registry}:shards`` = 4, events fan out to runs placed in every shard
and to the cancellation rules of every shard. Under MONITOR no script touches two slots, the ingest
included. A sender SIGKILLed between its script and the deliveries (or between a delivery and its
acknowledgement) loses nothing and doubles nothing: the sweeper finishes the fan-out, and racing
deliveries of the same messages create each run once and cancel each run once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster

import stepq
from stepq.event import Event
from stepq.runtime import history, keys, outbox, shards
from stepq.runtime.codec import pack, unpack
from stepq.runtime.connection import RedisClient
from stepq.runtime.event_queries import get_event, recent_events
from stepq.runtime.ingest import Ingest
from stepq.runtime.queries import get_run
from stepq.runtime.registry import Registry
from stepq.runtime.store import RunStore, now_ms
from stepq.workers.embedded import EmbeddedRedis
from tests.cluster import LocalCluster
from tests.helpers import REDIS_URL, TERMINAL, WorkerOn, runs_of, use_shards
from tests.torture.slots import audited

APP = "t-outbox"
FUNCTIONS = ("fan-a", "fan-b", "fan-c")
SHARDS = 4


def _configs() -> list[dict[str, Any]]:
    """Three functions on one event, each cancelled by a stop event of the same ``k``."""
    return [
        {
            "id": slug,
            "app_id": APP,
            "triggers": [{"event": "ob/start"}],
            "cancel": [{"event": "ob/stop", "if": "async.data.k == event.data.k"}],
        }
        for slug in FUNCTIONS
    ]


async def _setup(redis: RedisClient) -> Ingest:
    """The test's functions registered, on 4 shards (a single Redis) or the cluster's 32."""
    if isinstance(redis, Redis):
        await use_shards(redis, SHARDS)
    registry = Registry(redis)
    await registry.register_app(APP, _configs())
    return Ingest(redis, RunStore(redis), registry)


async def _runs_by_event(redis: RedisClient, event_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per start event: (function, run id) of each outcome recorded."""
    out = {}
    for event_id in event_ids:
        view = await get_event(redis, event_id)
        assert view is not None, event_id
        out[event_id] = sorted((o.function or "", o.run_id or "") for o in view.outcomes)
    return out


async def _all_runs(redis: RedisClient) -> dict[str, str]:
    """Every run of the test's functions, in every shard: run id -> function."""
    found = {}
    for shard in shards.shards():
        for raw in await redis.zrange(keys.runs_active(shard), 0, -1) + await redis.zrange(
            keys.runs_done(shard), 0, -1
        ):
            run_id = raw.decode()
            fn = await redis.hget(keys.run(run_id), "fn")  # type: ignore[misc]
            if fn is not None:
                found[run_id] = fn.decode()
    return found


async def _outbox_size(redis: RedisClient) -> int:
    return sum([await redis.zcard(keys.outbox(s)) + await redis.hlen(keys.outbox_body(s)) for s in shards.shards()])  # type: ignore[misc]


async def _check_exactly_once(redis: RedisClient, start_ids: list[str], stopped: set[int]) -> None:
    """Each start event started one run of each function (recorded once in its outcomes, no other run
    exists); the runs of the stopped ``k`` values are cancelled, once each; the outboxes are empty."""
    by_event = await _runs_by_event(redis, start_ids)
    runs = await _all_runs(redis)
    for event_id, pairs in by_event.items():
        assert [fn for fn, _ in pairs] == sorted(FUNCTIONS), (event_id, pairs)
    recorded = [run_id for pairs in by_event.values() for _, run_id in pairs]
    assert sorted(recorded) == sorted(runs), "a run no outcome names, or an outcome naming no run"
    assert Counter(runs.values()) == {fn: len(start_ids) for fn in FUNCTIONS}
    assert len({shards.shard_of(r) for r in runs}) > 1, "the runs did not spread over the shards"
    for event_id in start_ids:
        stored = await get_event(redis, event_id)
        assert stored is not None
        k = stored.data["k"]
        for _, run_id in by_event[event_id]:
            view = await get_run(redis, run_id)
            assert view is not None
            entries = [history.decode(raw) for raw in await redis.lrange(keys.history(run_id), 0, -1)]  # type: ignore[misc]
            cancels = [e for e in entries if e is not None and e.kind == history.K_CANCEL]
            if k in stopped:
                assert view.status == "cancelled" and len(cancels) == 1, (run_id, view.status, cancels)
            else:
                assert view.status == "queued" and not cancels, (run_id, view.status)
    assert await _outbox_size(redis) == 0


async def test_a_fan_out_over_four_shards_touches_one_slot_per_script(private_redis: EmbeddedRedis) -> None:
    async with audited(private_redis) as (audit, redis):
        await _fan_out(redis)
    calls = audit.calls
    assert calls["ingest_events"] >= 7 and calls["outbox_receive_run"] > 0 and calls["outbox_ack"] > 0, calls
    assert not audit.violations(), audit.violations()


async def test_on_a_cluster_events_fan_out_to_every_master(cluster_redis: RedisCluster, cluster: LocalCluster) -> None:
    """The same on a 3-master Redis Cluster (32 shards), which refuses any script touching two slots."""
    await _fan_out(cluster_redis)


async def _fan_out(redis: RedisClient) -> None:
    """Batches of start events (each in a random shard) start 3 runs each, placed anywhere; stop
    events cancel the runs of some ``k``s, in whatever shard they are."""
    ingest = await _setup(redis)
    start_ids = []
    for batch in range(6):
        start_ids += await ingest.send([Event("ob/start", {"k": 3 * batch + i}) for i in range(3)])
    stopped = {1, 4, 7, 11, 16}
    await ingest.send([Event("ob/stop", {"k": k}) for k in sorted(stopped)])
    await _check_exactly_once(redis, start_ids, stopped)
    # the event log is read across its shards
    listed = [e.id for e in (await recent_events(redis, limit=100, name="ob/start")).events]
    assert sorted(listed) == sorted(start_ids) and len({shards.event_shard(i) for i in listed}) > 1


#: A sender that stores its batches and dies (SIGKILL) before delivering their messages, or (mode
#: ``ack``) after the first delivery, before its acknowledgement.
SENDER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from stepq.event import Event
    from stepq.runtime import outbox
    from stepq.runtime.connection import open_redis
    from stepq.runtime.ingest import Ingest
    from stepq.runtime.registry import Registry
    from stepq.runtime.store import RunStore

    def die(*args, **kwargs):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    async def main(url, mode, name, first, count):
        redis = await open_redis(url)
        store = RunStore(redis)
        if mode == "deliver":
            outbox.deliver = die
        else:
            call = store.scripts.call
            async def call_then_die(script, *args, **kwargs):
                if script == "outbox_ack":
                    die()
                return await call(script, *args, **kwargs)
            store.scripts.call = call_then_die
        ingest = Ingest(redis, store, Registry(redis))
        ids = await ingest.send([Event(name, {"k": k}) for k in range(first, first + count)])
        die()

    asyncio.run(main(*sys.argv[1:4], int(sys.argv[4]), int(sys.argv[5])))
    """
)


def _send_and_die(url: str, mode: str, name: str, first: int, count: int) -> None:
    """Run SENDER, and check that it was killed."""
    env = {**os.environ, "STEPQ_LOG_LEVEL": "warning"}
    done = subprocess.run(
        [sys.executable, "-c", SENDER, url, mode, name, str(first), str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == -9, (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("mode", ["deliver", "ack"])
async def test_a_sender_killed_between_the_halves_loses_nothing_and_doubles_nothing(redis: Redis, mode: str) -> None:
    await _killed_senders(redis, REDIS_URL, mode)


@pytest.mark.parametrize("mode", ["deliver", "ack"])
async def test_on_a_cluster_a_killed_sender_loses_nothing_and_doubles_nothing(
    cluster_redis: RedisCluster, cluster: LocalCluster, mode: str
) -> None:
    await _killed_senders(cluster_redis, cluster.url, mode)


#: How a worker finds a killed sender's messages: its ``outbox`` chore's visits (one shard each), or
#: its idle checks (claims, which look for a due message too) with a chore that never visits.
FINDERS = {
    "chore": {"STEPQ_OUTBOX_SWEEP": "0.2"},
    "idle-checks": {"STEPQ_OUTBOX_SWEEP": "3600", "STEPQ_IDLE_CHECK": "0.25"},
}


@pytest.mark.parametrize("finder", FINDERS)
async def test_a_workers_sweeper_delivers_a_killed_senders_messages_shard_by_shard(
    redis: Redis, tmp_path: Path, finder: str
) -> None:
    """No one delivers by hand: a worker finds the messages once they are due (5 s after the send)
    and delivers each once."""
    await _setup(redis)
    _send_and_die(REDIS_URL, "deliver", "ob/start", 0, 8)
    start_ids = [e.id for e in (await recent_events(redis, limit=100, name="ob/start")).events]
    assert len(start_ids) == 8 and await _outbox_size(redis) > 0
    worker = WorkerOn("queue_app", tmp_path, REDIS_URL, env=FINDERS[finder])
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 30
        while await _outbox_size(redis):
            assert time.monotonic() < deadline, "the worker's sweeper left messages in the outbox"
            await asyncio.sleep(0.1)
        assert worker.alive()
    finally:
        worker.stop()
    await _check_exactly_once(redis, start_ids, set())


async def _killed_senders(redis: RedisClient, url: str, mode: str) -> None:
    """``deliver``: each sender dies right after its script, before delivering any message; ``ack``:
    after delivering its first message, before acknowledging it. Then the sweepers of two workers and
    a by-hand delivery of the same messages race to finish the fan-out."""
    ingest = await _setup(redis)
    _send_and_die(url, mode, "ob/start", 0, 8)
    start_ids = [e.id for e in (await recent_events(redis, limit=100, name="ob/start")).events]
    assert len(start_ids) == 8
    assert await _outbox_size(redis) > 0  # runs of other shards (and the matching) wait in the outbox
    assert len(await _all_runs(redis)) < 24
    await _race_to_deliver(ingest)
    stopped = {2, 5}
    for k in sorted(stopped):  # the cancellations, once the runs exist (a stop before them matches nothing)
        _send_and_die(url, mode, "ob/stop", k, 1)
    await _race_to_deliver(ingest)
    await _check_exactly_once(redis, start_ids, stopped)


async def _race_to_deliver(ingest: Ingest) -> None:
    """Two workers' sweepers and a by-hand delivery of every message left, at once."""
    redis = ingest.redis
    ids = [i.decode() for s in shards.shards() for i in await redis.zrange(keys.outbox(s), 0, -1)]
    assert ids
    later = now_ms() + outbox.REDELIVER_AFTER_MS + 1
    other = Ingest(redis, RunStore(redis), Registry(redis))
    await asyncio.gather(
        outbox.Sweeper(ingest).sweep_all(later), outbox.Sweeper(other).sweep_all(later), outbox.deliver(ingest, ids)
    )
    assert await _outbox_size(redis) == 0


async def test_a_redelivered_run_message_repeats_its_answer_and_writes_nothing(redis: Redis) -> None:
    """A run message delivered, then (its ack lost) delivered again: one run, one outcome, one charge."""
    ingest = await _setup(redis)
    body_key = keys.outbox_body(0)
    # a message written by hand from shard 0 to the shard of a fresh run id: create that run
    run_id = shards.new_run_id(shard=SHARDS - 1)
    capture: dict[str, Any] = {}

    class Capture:
        async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
            capture["keys"], capture["args"] = list(keys_and_args[:numkeys]), list(keys_and_args[numkeys:])

    await ingest.store.create_run(
        run_id=run_id,
        fn_slug="fan-a",
        app_id=APP,
        events=[Event("ob/start", {"k": 9}, "e1")],
        dedupe_key=None,
        pipe=Capture(),
    )
    message_id = outbox.message_id(0, SHARDS - 1, f"by-hand:{run_id}")
    body = outbox.run_body(capture["keys"], capture["args"], event_id="", fn="fan-a", gathers=False)
    for _ in range(3):
        await redis.hset(body_key, message_id, body)  # type: ignore[misc,arg-type]
        await redis.zadd(keys.outbox(0), {message_id: 0})
        assert await outbox.deliver(ingest, [message_id]) == 1
    received = unpack(await redis.get(keys.outbox_received(SHARDS - 1, message_id)))
    assert received[:2] == [1, run_id]
    assert await redis.zscore(keys.runs_active(SHARDS - 1), run_id) is not None
    assert (await get_run(redis, run_id)).status == "queued"  # type: ignore[union-attr]
    assert await redis.zcard(keys.queue(SHARDS - 1, APP)) == 1  # one first job
    assert await _outbox_size(redis) == 0


@pytest.mark.parametrize(
    "blob",
    [b"\xc1not msgpack", pack([1, 2]), pack({"k": "teleport"}), pack({"k": "run", "keys": "x", "args": []})],
)
async def test_an_unreadable_message_goes_to_the_dead_letters(redis: Redis, blob: bytes) -> None:
    ingest = await _setup(redis)
    message_id = outbox.message_id(1, 2, "bad")
    await redis.hset(keys.outbox_body(1), message_id, blob)  # type: ignore[misc,arg-type]
    await redis.zadd(keys.outbox(1), {message_id: 0})
    assert await outbox.Sweeper(ingest).sweep_all(now_ms()) == 0
    [dead] = await redis.lrange(keys.outbox_dead(1), 0, -1)  # type: ignore[misc]
    record = unpack(dead)
    assert record["id"] == message_id and record["body"] == blob and record["error"]
    assert await _outbox_size(redis) == 0


async def test_an_invoked_childs_end_resolves_its_parent_in_another_shard_once(private_redis: EmbeddedRedis) -> None:
    """A child in another shard than its parent: its end (here a cancellation) writes a message into
    the child's shard's outbox; its delivery memoizes the error in the parent's invoke step. The
    caller killed before delivering: two sweepers deliver it, once. A child of the parent's own shard
    resolves the step in its own script, with no message."""
    async with audited(private_redis) as (audit, redis):
        ingest = await _setup(redis)
        store = ingest.store
        parent = shards.new_run_id(shard=0)
        await store.create_run(
            run_id=parent, fn_slug="fan-a", app_id=APP, events=[Event("ob/start", {})], dedupe_key=None
        )
        steps = {
            "far": shards.new_run_id(shard=2),
            "far-swept": shards.new_run_id(shard=3),
            "near": shards.new_run_id(shard=0),
        }
        for key, child in steps.items():
            await redis.sadd(keys.pending(parent), key)  # type: ignore[misc]  # the invoke steps wait
            await store.create_run(
                run_id=child,
                fn_slug="fan-b",
                app_id=APP,
                events=[Event("ob/start", {})],
                dedupe_key=None,
                parent=f"{parent}|{key}",
            )
        # delivered by the caller at once
        await ingest_cancel(ingest, steps["far"])
        # the caller dies between the halves: the message waits in the child's shard's outbox
        written = await store.cancel(steps["far-swept"], "stopped")
        _, sent = outbox.split(written.ended)
        assert [outbox.source_of(m) for m in sent] == [3]
        assert await redis.hget(keys.memo(parent), "far-swept") is None  # type: ignore[misc]
        later = now_ms() + outbox.REDELIVER_AFTER_MS + 1
        other = Ingest(redis, RunStore(redis), Registry(redis))
        await asyncio.gather(outbox.Sweeper(ingest).sweep_all(later), outbox.Sweeper(other).sweep_all(later))
        # the same shard: no message
        written = await store.cancel(steps["near"], "stopped")
        assert outbox.split(written.ended) == ([], [])
        memo = await redis.hgetall(keys.memo(parent))  # type: ignore[misc]
        for key in steps:
            assert unpack(memo[key.encode()])["error"]["name"] == "Cancelled", key
        entries = [history.decode(raw) for raw in await redis.lrange(keys.history(parent), 0, -1)]  # type: ignore[misc]
        children = Counter(e.fields.get("key") for e in entries if e is not None and e.kind == history.K_CHILD)
        assert children == {"far": 1, "far-swept": 1, "near": 1}, children
        assert await _outbox_size(redis) == 0
    assert not audit.violations(), audit.violations()


async def ingest_cancel(ingest: Ingest, run_id: str) -> None:
    from stepq.runtime import lifecycle

    assert await lifecycle.cancel(ingest, run_id, "stopped") == "ok"


async def test_on_a_cluster_invoked_children_resume_their_parents_across_masters(
    cluster_redis: RedisCluster, cluster: LocalCluster, tmp_path: Path
) -> None:
    """step.invoke on a 3-master cluster: children are created on their own shards (by the invoke
    job), and their results (an output, a failure) resume parents on other masters through the
    outbox; a third parent's invoke times out as before."""
    workers = []
    for i in range(2):
        (tmp_path / f"w{i}").mkdir()
        workers.append(WorkerOn("invokes", tmp_path / f"w{i}", cluster.url))
    sender = stepq.Client("test-sender", redis_url=cluster.url)
    try:
        for worker in workers:
            worker.wait_ready(timeout=30)
        parents = {}
        for mode in ("ok", "fail", "timeout", "ok", "ok", "ok"):
            [event_id] = await sender.send(stepq.Event(name="test/invoke.parent", data={"mode": mode}))
            parents[event_id] = mode
        ends: dict[str, tuple[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(ends) < len(parents):
            assert time.monotonic() < deadline, f"parents not ended: {ends}"
            for view in await runs_of(cluster_redis, "parent"):
                if view.status in TERMINAL and view.event_ids[0] in parents:
                    ends[view.run_id] = (parents[view.event_ids[0]], view.output)
            await asyncio.sleep(0.2)
        children = [v for f in ("double", "breaks") for v in await runs_of(cluster_redis, f)]
        far = [c for c in children if shards.shard_of(c.run_id) != shards.shard_of(c.event_ids[0].partition(".")[0])]
        assert far, "no child was placed in another shard than its parent"
        for mode, output in ends.values():
            if mode == "ok":
                assert output["result"]["doubled"] in (42, 8), output
            elif mode == "fail":
                assert output == {"caught": {"name": "NonRetriableError", "message": "the child broke"}}
            else:
                assert output["caught"]["name"] == "InngestInvokeTimeoutError", output
        assert await _outbox_size(cluster_redis) == 0
    finally:
        await sender.aclose()
        for worker in workers:
            worker.stop()


#: An app that only sends events, with structlog as the app left it (unconfigured).
QUIET_APP = textwrap.dedent(
    """
    import sys
    import stepq
    client = stepq.Client("t-outbox-app", redis_url=sys.argv[1])
    client.send_sync([stepq.Event("ob/start", {"k": k}) for k in range(8)])
    client.send_sync([stepq.Event("ob/stop", {"k": k}) for k in range(8)])
    print("sent")
    """
)


async def test_an_app_that_sends_events_prints_none_of_stepqs_routine_lines(redis: Redis) -> None:
    """Its events fan out to runs in other shards and cancel them (a line each, at debug or info
    level): structlog's defaults would print every one of those lines on the app's stdout."""
    await _setup(redis)
    done = subprocess.run(
        [sys.executable, "-c", QUIET_APP, REDIS_URL], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "sent", done.stdout[-2000:]
    # the deliveries happened: every run is cancelled
    runs = await _all_runs(redis)
    assert len(runs) == 8 * len(FUNCTIONS)
    assert {(await get_run(redis, run_id)).status for run_id in runs} == {"cancelled"}  # type: ignore[union-attr]
