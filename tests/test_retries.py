"""Issue 2.4: per-step retries, NonRetriableError, a caught StepError, RetryAfterError."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime.codec import unpack
from tests.helpers import StartWorkers, read_lines, run_memo, sha1, start_run, wait_for_run

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = pytest.mark.both_deployments


def attempt_times(path: Path) -> list[float]:
    return [float(line.split()[1]) for line in read_lines(path)]


async def test_step_failing_twice_then_succeeding_completes_after_three_attempts(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("retries")
    log = tmp_path / "flaky.log"
    run_id = await start_run(sender, redis, "flaky", "test/flaky", {"log": str(log)})

    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    assert view.output == "ok after 3"
    assert len(attempt_times(log)) == 3
    [step] = view.steps
    assert (step.name, step.attempts, step.done) == ("call-upstream", 3, True)
    assert step.memo == {"data": "ok after 3"}
    # The last failure is kept for people to read; it does not make the step fail.
    assert step.error is not None and "upstream down (attempt 2)" in step.error


async def test_non_retriable_error_fails_the_run_at_once(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("retries")
    log = tmp_path / "give-up.log"
    run_id = await start_run(sender, redis, "give-up", "test/give-up", {"log": str(log)})

    view = await wait_for_run(redis, run_id)

    assert view.status == "failed"
    assert len(attempt_times(log)) == 1
    assert view.error["name"] == "NonRetriableError"
    assert view.error["message"] == "card declined"


async def test_caught_step_error_lets_the_run_complete_with_a_fallback(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("retries")
    log = tmp_path / "fallback.log"
    run_id = await start_run(sender, redis, "fallback", "test/fallback", {"log": str(log)})

    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    assert view.output == {"fallback": True, "name": "KeyError", "message": "'no such customer'"}
    assert len(attempt_times(log)) == 1
    # The step's memo is the error, in Inngest's shape.
    memo = unpack((await run_memo(redis, run_id))[sha1("lookup")])
    assert set(memo) == {"error"}
    assert set(memo["error"]) == {"name", "message", "stack"}
    assert memo["error"]["name"] == "KeyError"
    assert "no such customer" in memo["error"]["stack"]


async def test_retry_after_error_delays_the_next_attempt(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("retries")
    log = tmp_path / "slow-down.log"
    run_id = await start_run(sender, redis, "slow-down", "test/slow-down", {"log": str(log)})

    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    assert view.output == 2
    first, second = attempt_times(log)
    assert second - first >= 1.5


async def test_a_step_retry_policy_overrides_the_functions(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("retries")
    once, patient, shaky = tmp_path / "once.log", tmp_path / "patient.log", tmp_path / "shaky.log"
    per_step = await start_run(sender, redis, "per-step", "test/per-step", {"once": str(once), "patient": str(patient)})
    strict = await start_run(sender, redis, "strict", "test/strict", {"log": str(shaky)})

    view = await wait_for_run(redis, per_step)
    assert view.status == "completed", view.error
    # retries=0 on a function allowing 4: one attempt, then a catchable StepError.
    assert len(attempt_times(once)) == 1
    assert view.output["once"] == "no retries for me"
    # retries=3: the fourth attempt succeeds.
    assert view.output["patient"] == "ok after 4"
    assert len(attempt_times(patient)) == 4

    view = await wait_for_run(redis, strict)
    # The function allows no retry, its step asks for two: three attempts.
    assert (view.status, view.output) == ("completed", "ok after 3"), view.error
    assert len(attempt_times(shaky)) == 3
