"""A run whose code asks for other steps than its history fails clearly, naming the step: never a hang."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

import stepq
from tests.helpers import StartWorkers, read_lines, start_run, wait_for_run


async def test_random_step_id_fails_the_run_with_a_non_determinism_error_naming_the_step(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("divergent")
    log = tmp_path / "random-step.log"
    run_id = await start_run(sender, redis, "random-step", "test/random-step", {"log": str(log)})

    view = await wait_for_run(redis, run_id)

    assert view.status == "failed"
    assert view.error["name"] == "NonDeterminismError"
    executed = read_lines(log)
    # The step the run's history holds, by the id the user's code gave it, and where it was.
    message = view.error["message"]
    assert f"'{executed[0]}'" in message
    assert "position 1 of 1" in message
    print(f"step executions for one divergent run: {len(executed)} ({executed})")
