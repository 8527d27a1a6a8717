"""The randomized torture test (issue 8): every run ends, and every step's result is committed once,
whatever the load, the faults and the input.

A seeded generator builds a few hundred programs that mix every step kind (``tests/torture/
program.py``); one interpreter function runs them, in worker processes and served over HTTP. While
they run, workers are SIGKILLed and replaced every few seconds, one is paused past its lease, and
Redis (AOF) restarts. At the end each run is compared with a plain-Python reference model of its
program (``tests/torture/model.py``): its status and output or error, the exact set of committed
steps and their values, the executions behind each commit; nothing may be left queued, pending or
waiting for ended runs, and Redis must return to its baseline once the runs' retention is over.

The seed comes from ``STEPQ_TORTURE_SEED`` (random otherwise) and is in every failure message, with
the command that reruns it. ``python bench/torture.py --minutes 30`` runs the same for longer.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.torture.cluster import Settings
from tests.torture.driver import Config, Torture, explicit_programs
from tests.torture.engine_only import EngineOnly
from tests.torture.faults import FaultPlan
from tests.torture.invariants import check_run, sha1
from tests.torture.model import Model, child_programs, memo_oracle
from tests.torture.program import KNOWN_SHAPES, Generator, Program
from tests.torture.report import Report

SEED = int(os.environ.get("STEPQ_TORTURE_SEED") or random.SystemRandom().randrange(2**31))


async def test_the_model_and_the_engine_agree_on_generated_programs() -> None:
    """Without Redis, workers or faults: the pure engine runs 400 programs as the model says.

    So a failure of the torture test below is the runtime's (or the faults'), not the harness's."""
    engine = EngineOnly()
    failures: list[str] = []
    for program in [*Generator(SEED).programs(400), *explicit_programs(KNOWN_SHAPES, "k")]:
        programs: dict[str, Program] = {program["pid"]: program, **child_programs(program)}
        for snap in await engine.run(program):
            expected = Model(programs[snap.pid], memo_oracle(snap.memo, sha1)).expect()
            violations, _ = check_run(snap, expected, engine.executions(snap.pid))
            failures += [v.render(programs[snap.pid]) for v in violations]
    assert not failures, f"seed {SEED} (STEPQ_TORTURE_SEED={SEED}):\n" + "\n".join(failures[:10])


@pytest.mark.timeout(480)
async def test_a_few_hundred_random_runs_under_kills_pauses_and_a_redis_restart(tmp_path: Path) -> None:
    report = await Torture(Config(seed=SEED), tmp_path).run()
    print("\ntorture:", report.figures())
    assert_held(report, runs=240, kills=8)


def assert_held(report: Report, *, runs: int, kills: int) -> None:
    """Enough runs checked and faults made for the run to mean something, and no invariant broken."""
    assert report.tally.runs >= runs, (
        f"seed {SEED}: only {report.tally.runs} runs were checked\n{report.failure_message()}"
    )
    faults = report.faults
    assert len(faults.kills) >= kills and faults.pauses and faults.restarts, (
        f"seed {SEED}: too few faults: {faults.summary()}"
    )
    assert not report.violations, report.failure_message()


@pytest.mark.timeout(300)
async def test_random_runs_on_a_redis_cluster_under_kills_and_a_master_failover(tmp_path: Path) -> None:
    """A subset of the above on a local Redis Cluster (3 masters, a replica each; 32 shards, so most
    events, invokes and waits cross shards through the outbox): 80 programs sent over 20 s, workers
    SIGKILLed every 4 s, one paused past its lease, and at 12 s a master SIGKILLed so that its
    replica takes over. Every run must end as its model says, and nothing may be left behind.

    Replication is asynchronous: a write acknowledged by the killed master in its last milliseconds
    may be lost (README, "What replication can lose"): a lost step commit re-runs the step (a
    duplicate execution, which the invariants allow); a loss that changed a run's outcome would show
    as a violation. The step handlers' records of their executions go to a Redis beside the cluster
    (tests/torture/cluster.py): a lost record would look like a step committed without its
    execution, a fault of the test, not of stepq."""
    # a worker is SIGKILLed every 4 s: a short idle check makes the survivors read the movers' hint
    # (and visit idle shards) often, so a dead mover's shards are taken over well inside the bounds
    settings = Settings(redis_cluster=True, idle_check_s=0.25)
    plan = FaultPlan(pauses_at_s=(6.0,), restarts_at_s=(12.0,))
    config = Config(
        seed=SEED, runs=80, send_over_s=20.0, faults_until_s=24.0, settings=settings, faults=plan, check_memory=False
    )
    report = await Torture(config, tmp_path).run()
    print("\ntorture on a cluster:", report.figures())
    assert_held(report, runs=80, kills=3)
