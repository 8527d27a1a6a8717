"""One function starting another: step.invoke (the parent gets the child's output, the child's
failure as a StepError, or the invoke's timeout as a StepError named InngestInvokeTimeoutError), and
step.send_event (the event it sends starts the other function once). Each runs on one shard and on
four (one Redis holding the shard count): there the child is mostly in another shard than its
parent, created by the invoke job on its own shard, and its result crosses back through the child's
shard's outbox (runtime/outbox.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime.codec import unpack
from tests.helpers import StartWorkers, read_lines, run_memo, runs_of, sha1, start_run, wait_for_run

# On the single Redis and on the local cluster (tests/conftest.py).
pytestmark = [pytest.mark.both_deployments, pytest.mark.usefixtures("shard_count")]

CALL_KEY = sha1("call")


async def child_of(redis: Redis, function: str, parent_run_id: str) -> str:
    """The run of ``function`` that ``parent_run_id`` invoked (its event id names the parent)."""
    found = [
        view.run_id
        for view in await runs_of(redis, function)
        if any(e.startswith(f"{parent_run_id}.") for e in view.event_ids)
    ]
    assert len(found) == 1, f"parent {parent_run_id} started {len(found)} runs of {function}"
    return found[0]


async def test_parent_gets_the_child_output(redis: Redis, sender: stepq.Client, start_workers: StartWorkers) -> None:
    start_workers("invokes")
    by_ref = await start_run(sender, redis, "parent", "test/invoke.parent", {"mode": "ok"})
    by_id = await start_run(sender, redis, "parent", "test/invoke.parent", {"mode": "by-id"})

    done = await wait_for_run(redis, by_ref)
    assert done.status == "completed", done.error
    assert done.output == {"result": {"doubled": 42, "trigger": "inngest/function.invoked"}}
    assert unpack((await run_memo(redis, by_ref))[CALL_KEY]) == {
        "data": {"doubled": 42, "trigger": "inngest/function.invoked"}
    }
    child = await wait_for_run(redis, await child_of(redis, "double", by_ref))
    assert child.status == "completed" and child.output == done.output["result"]
    assert child.ended_ms is not None and done.ended_ms is not None and done.ended_ms >= child.ended_ms

    done = await wait_for_run(redis, by_id)
    assert done.status == "completed", done.error
    assert done.output == {"result": {"doubled": 8, "trigger": "inngest/function.invoked"}}


async def test_child_failure_raises_step_error_in_the_parent(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("invokes")
    run_id = await start_run(sender, redis, "parent", "test/invoke.parent", {"mode": "fail"})

    done = await wait_for_run(redis, run_id)

    assert done.status == "completed", done.error
    assert done.output == {"caught": {"name": "NonRetriableError", "message": "the child broke"}}
    child = await wait_for_run(redis, await child_of(redis, "breaks", run_id))
    assert child.status == "failed"
    assert child.error["message"] == "the child broke"
    memo = unpack((await run_memo(redis, run_id))[CALL_KEY])
    assert memo["error"]["name"] == "NonRetriableError" and memo["error"]["message"] == "the child broke"


async def test_invoke_timeout_raises_step_error_in_the_parent(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("invokes")
    run_id = await start_run(sender, redis, "parent", "test/invoke.parent", {"mode": "timeout"})

    done = await wait_for_run(redis, run_id, timeout=20)

    assert done.status == "completed", done.error
    assert done.output == {
        "caught": {"name": "InngestInvokeTimeoutError", "message": "Timed out waiting for invoked function to complete"}
    }
    assert done.ended_ms is not None and done.started_ms is not None
    assert done.ended_ms - done.started_ms >= 1000
    # The child was still sleeping when the parent gave up; it finishes on its own later.
    child_id = await child_of(redis, "slow", run_id)
    child = await wait_for_run(redis, child_id, timeout=20)
    assert child.status == "completed" and child.output == "finally"
    assert child.ended_ms is not None and child.ended_ms > done.ended_ms
    # Its late result does not overwrite the parent's memo.
    memo = unpack((await run_memo(redis, run_id))[CALL_KEY])
    assert memo["error"]["name"] == "InngestInvokeTimeoutError"


async def test_send_event_starts_the_other_function_once(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """``announcer`` sends ``app/ping`` in a step, then re-enters twice for two more steps: the send
    is memoized, so ``pinged`` runs exactly once."""
    start_workers("senders")
    log = tmp_path / "pings.log"
    run_id = await start_run(sender, redis, "announcer", "test/announce", {"log": str(log)})

    done = await wait_for_run(redis, run_id)

    assert done.status == "completed", done.error
    assert done.output is not None and done.output["two"] == 2
    [sent_id] = done.output["ids"]
    deadline = time.monotonic() + 15
    while not (pinged := await runs_of(redis, "pinged")) or pinged[0].status != "completed":
        assert time.monotonic() < deadline, f"pinged did not complete: {pinged}"
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)  # a resent event would have started another run by now
    [ping] = await runs_of(redis, "pinged")
    assert ping.event_ids == [sent_id]
    assert ping.output == sent_id
    assert read_lines(log) == [f"{ping.run_id} {sent_id}"]
    assert [s.name for s in done.steps] == ["ping", "one", "two"]
