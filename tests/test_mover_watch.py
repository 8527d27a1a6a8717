"""A shard whose mover was SIGKILLed is taken over in seconds on a Redis Cluster (workers/mover_watch.py).

With default options an idle worker checks each of the 32 shards only every 32 x 4 s = 128 s; the
mover of a shard (the worker with a timer at its earliest delayed job) publishes its wake time in
one key that every worker reads every 4 s. So after a mover's death its shards' delayed work (sleeps'
ends, retries, the lapsed leases of the steps the dead worker ran) goes on within seconds of when it
was due, not minutes. These tests check it on the local cluster (3 masters), with real workers, and
that the hint heals when it is lost or stale.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

from redis.asyncio import RedisCluster

from stepq.runtime import history, keys, shards
from stepq.runtime.job_queue import MOVER_GRACE_MS
from stepq.runtime.queries import get_run
from tests.apps.cluster_app import expected
from tests.cluster import LocalCluster
from tests.helpers import WorkerOn
from tests.test_cluster import create_runs, lines_of, steps_ran, wait_for_ends

APP = "t-cluster"
LEASE_S = 10.0
#: Default idle checks (a shard every 128 s per worker: what the watch is for) and lease.
WORKER_ENV = {"STEPQ_IDLE_CHECK": "4", "STEPQ_LEASE": str(LEASE_S)}
#: How late delayed work may go on after a mover's death, a bound on correctness (without the watch:
#: up to 128 s): the grace the watch gives a mover and a watch period (4 s), plus room for a worker
#: killed just after taking the wake-up token of a delayed job due before its shard's wake time (or
#: after such a claim, before its write of the hint): the shard keeps its older wake time, at most a
#: lease later here; and for a stale hint's one more period, and load.
LATE_BOUND_MS = MOVER_GRACE_MS + 2 * 4000 + int(LEASE_S * 1000)


def start(tmp_path: Path, url: str, name: str) -> WorkerOn:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    worker = WorkerOn("cluster_app", directory, url, env=WORKER_ENV)
    worker.wait_ready(timeout=30)
    return worker


async def movers(redis: Any) -> dict[int, int | None]:
    """Each shard's mover, by pid (None: no mover)."""
    out: dict[int, int | None] = {}
    for shard in shards.shards():
        token = await redis.get(keys.mover(shard, APP))
        out[shard] = int(token.decode().split(":")[1]) if token else None
    return out


async def jobs_held(redis: Any, pid: int) -> dict[str, int]:
    """The runs whose job the worker ``pid`` holds, with the job's score (its lease's end)."""
    held = {}
    for shard in shards.shards():
        for job_id, score in await redis.zrange(keys.queue(shard, APP), 0, -1, withscores=True):
            token = await redis.get(keys.in_progress(job_id.decode()))
            if token is not None and int(token.decode().split(":")[1]) == pid:
                held[job_id.decode().split(":")[0]] = int(score)
    return held


async def lateness(redis: Any, run_id: str, lease_end_ms: int | None) -> dict[str, int]:
    """How late each delayed piece of the run's work went on (ms), by kind: the sleep's wake-up
    after its wake time, the retried step's next attempt after its retry time, and a step that the
    killed worker ran (``lease_end_ms``: when its lease lapsed), run again."""
    entries = [e for e in (history.decode(raw) for raw in await redis.lrange(keys.history(run_id), 0, -1)) if e]
    late: dict[str, int] = {}
    wake_at = next(e.fields["wake_at_ms"] for e in entries if e.kind == history.K_SLEEP)
    woke = next(e.at_ms for e in entries if e.kind == history.K_WOKE)
    late["sleep"] = woke - int(wake_at)
    retry = next(e for e in entries if e.kind == history.K_RETRY and e.fields.get("name") == "flaky")
    again = next(e for e in entries if e.kind == history.K_COMMIT and e.fields.get("name") == "flaky")
    late["retry"] = int(again.fields["started_ms"]) - int(retry.fields["retry_at_ms"])
    first = next(e for e in entries if e.kind == history.K_COMMIT and e.fields.get("name") == "a")
    if lease_end_ms is not None:
        # step a was the killed worker's: it ran again (and committed) once its lease lapsed
        late["rerun"] = int(first.fields["started_ms"]) - lease_end_ms
    return late


async def test_delayed_work_of_a_killed_mover_s_shards_goes_on_within_seconds(
    cluster_redis: RedisCluster, cluster: LocalCluster, tmp_path: Path
) -> None:
    """Two workers; runs in every shard, some mid-step, the others asleep; SIGKILL the worker that
    is the mover of the most shards; every run's sleep, retry and re-run step go on within
    ``LATE_BOUND_MS`` of when they were due. Twice, a new worker replacing the dead one."""
    workers = [start(tmp_path, cluster.url, "w0"), start(tmp_path, cluster.url, "w1")]
    worst: dict[str, int] = {}
    try:
        for round_ in range(2):
            log = tmp_path / f"steps-{round_}.log"
            created = await create_runs(cluster_redis, 64, log, nap="5s")
            slow = await create_runs(cluster_redis, 32, log, nap="5s", work_s=3)
            await steps_ran(log, 96)  # every run's first step started: the slow ones run it now
            await asyncio.sleep(0.5)
            roles = await movers(cluster_redis)
            counts = collections.Counter(pid for pid in roles.values() if pid is not None)
            victim = next(w for w in workers if w.pid == counts.most_common(1)[0][0])
            victim.proc.kill()
            victim.proc.wait(timeout=10)
            workers.remove(victim)
            held = await jobs_held(cluster_redis, victim.pid)
            # the runs' numbers restart at 0 in each batch: check each batch on its own
            everything = {**created, **slow}
            try:
                for batch in (created, slow):
                    await _check_batch(cluster_redis, batch)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{lines_of(workers)}") from None
            for run_id in everything:
                late = await lateness(cluster_redis, run_id, held.get(run_id))
                for kind, ms in late.items():
                    worst[kind] = max(worst.get(kind, ms), ms)
                    assert ms <= LATE_BOUND_MS, (run_id, kind, ms, f"mover roles of the killed worker: {counts}")
            print(f"\nkill {round_}: the mover of {counts[victim.pid]} of 32 shards; worst lateness (ms) {worst}")
            workers.append(start(tmp_path, cluster.url, f"w{round_ + 2}"))
        assert "rerun" in worst, "no step was mid-run on the killed workers"
        for worker in workers:
            assert worker.alive(), worker.stderr()[-4000:]
    finally:
        for worker in workers:
            worker.stop()


async def _check_batch(redis: Any, batch: dict[str, int]) -> None:
    """Every run of ``batch`` completed with the right output."""
    try:
        statuses = await wait_for_ends(redis, list(batch), timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await _shard_states(redis, list(batch))}") from None
    assert set(statuses.values()) == {"completed"}, collections.Counter(statuses.values())
    for run_id, n in batch.items():
        view = await get_run(redis, run_id)
        assert view is not None and view.output == expected(n), (run_id, view)


async def _shard_states(redis: Any, run_ids: list[str]) -> str:
    """What the shards of runs that did not end hold (for a failure's message)."""
    from tests.helpers import run_statuses

    found = await run_statuses(redis, run_ids)
    out = [f"now {int(time.time() * 1000)}; hint {await redis.zrange(keys.mover_watch(APP), 0, -1, withscores=True)}"]
    for run_id, status in found.items():
        if status == "completed":
            continue
        shard = shards.shard_of(run_id)
        queue = await redis.zrange(keys.queue(shard, APP), 0, -1, withscores=True)
        out.append(
            f"{run_id} shard {shard}: queue {queue} mover {await redis.get(keys.mover(shard, APP))} "
            f"wake_at {await redis.get(keys.wake_at(shard, APP))} ready {await redis.llen(keys.ready(shard, APP))} "
            f"locks {[await redis.pttl(keys.in_progress(job.decode())) for job, _ in queue]} "
            f"history {[history.decode(r) for r in await redis.lrange(keys.history(run_id), 0, -1)]}"
        )
    return "\n".join(out)


async def test_the_movers_hint_heals_when_lost_or_stale(
    cluster_redis: RedisCluster, cluster: LocalCluster, tmp_path: Path
) -> None:
    """The hint is only a hint: deleted (as by a Redis restart), its mover writes its entry again; an
    entry that says a shard's mover is overdue when it is not (stale) costs a claim there, which writes
    the truth (the shard's mover's wake time, or no entry when it has none)."""
    worker = start(tmp_path, cluster.url, "w0")
    hint_key = keys.mover_watch(APP)

    async def hint() -> dict[int, int]:
        return {int(m): int(s) for m, s in await cluster_redis.zrange(hint_key, 0, -1, withscores=True)}

    async def until(what: str, check: Any) -> dict[int, int]:
        deadline = time.monotonic() + 30
        while True:
            found = await hint()
            if check(found):
                return found
            assert time.monotonic() < deadline, f"the hint did not {what}: {found}"
            await asyncio.sleep(0.2)

    try:
        created = await create_runs(cluster_redis, 1, tmp_path / "steps.log", shard=5, nap="60s")
        [run_id] = created
        # the mover's wake time moves to the sleep's end once the first step's lease end is past
        soon = int(time.time() * 1000) + 30_000
        asleep = await until("get the sleeping run's wake time", lambda h: h.get(5, 0) > soon)
        wake = asleep[5]
        assert wake == int(await cluster_redis.get(keys.wake_at(5, APP)))
        await cluster_redis.delete(hint_key)  # lost
        await until("get the entry back", lambda h: h.get(5) == wake)
        past = int(time.time() * 1000) - 10_000
        await cluster_redis.zadd(hint_key, {"5": past, "9": past})  # stale: shard 9 has no delayed job
        await until("heal", lambda h: h == {5: wake})
        assert (await get_run(cluster_redis, run_id)) is not None
        assert worker.alive(), worker.stderr()[-4000:]
    finally:
        worker.stop()
