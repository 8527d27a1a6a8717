"""Every script on a step's path touches the keys of one Redis Cluster slot (runtime/shards.py).

The torture workload (every step kind, in-process and served over HTTP, cancellations, retries,
invokes, waits, worker kills, then a replay and a resume of ended runs) runs with MONITOR attached;
each script call's keys, its declared KEYS and those its commands touched, must hash to one slot,
the event ingest's included (it crosses to other shards through its shard's outbox).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from stepq.runtime import keys
from stepq.runtime.shards import new_run_id
from stepq.workers.embedded import EmbeddedRedis
from tests.torture.cluster import Settings
from tests.torture.driver import Config, Torture
from tests.torture.faults import FaultPlan
from tests.torture.slots import audited

SEED = int(os.environ.get("STEPQ_TORTURE_SEED") or random.SystemRandom().randrange(2**31))


@pytest.mark.timeout(300)
async def test_no_script_of_a_mixed_workload_touches_two_slots(tmp_path: Path) -> None:
    faults = FaultPlan(kill_every_s=5.0, pauses_at_s=(), restarts_at_s=())
    config = Config(
        seed=SEED,
        runs=80,
        send_over_s=12,
        faults=faults,
        faults_until_s=15,
        check_memory=False,
        audit_slots=True,
        forks=True,
        # four shards on the one Redis: runs, events and invoked children spread, and whatever crosses
        # shards (an event's runs and waits elsewhere, a child's result) goes through the outbox
        settings=Settings(shards=4),
    )
    report = await Torture(config, tmp_path).run()
    print("\nslots:", report.figures(), report.script_calls)
    assert not report.violations, report.failure_message()
    calls = report.script_calls
    # the step path was exercised: claims, plans applied, loads, runs created, waits resolved
    for script in ("claim_jobs", "apply_plan", "create_run" if calls.get("create_run") else "ingest_events"):
        assert calls.get(script, 0) > 0, f"no {script} call seen: {calls}"
    assert calls.get("apply_plan", 0) >= 200, calls
    # runs of events and children of invokes were placed in other shards than their event's or parent's
    assert calls.get("outbox_receive_run", 0) > 0 and calls.get("outbox_ack", 0) > 0, calls
    # a replay and a resume (runtime/lua/fork_run.lua) created their runs, which then took steps
    assert calls.get("fork_run", 0) >= 2 and len(report.forks) == 2, (
        calls
    )  # (a first EVALSHA may miss the script cache)


async def test_the_audit_reports_a_script_that_touches_two_shards(private_redis: EmbeddedRedis) -> None:
    async with audited(private_redis) as (audit, redis):
        one, other = new_run_id(shard=0), new_run_id(shard=1)
        body = "redis.call('SET', KEYS[1], 1) redis.call('SET', ARGV[1], 1) return 1"
        await redis.eval(body, 1, keys.run(one), keys.memo(one))  # type: ignore[misc]
        await redis.eval(body, 1, keys.run(one), keys.memo(other))  # type: ignore[misc]
    [violation] = audit.violations()
    assert violation.startswith("eval touched 2 slots") and keys.memo(other) in violation
