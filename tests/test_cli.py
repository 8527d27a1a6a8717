"""The ``stepq`` command: send, runs, run, against the test Redis, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess

from redis.asyncio import Redis

from tests.helpers import REDIS_URL, ROOT, STEPQ_CLI, StartWorkers, run_ids_for_event, wait_for_run

#: Where STEPQ_REDIS_URL points in these tests: nothing answers there, so only --redis-url can work.
DEAD_URL = "redis://127.0.0.1:1/0"


def stepq(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STEPQ_REDIS_URL": DEAD_URL}
    return subprocess.run(
        [*STEPQ_CLI, *args, "--redis-url", REDIS_URL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sent_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    [event_id] = json.loads(result.stdout)["ids"]
    assert isinstance(event_id, str)
    return event_id


async def test_send_then_runs_then_run(redis: Redis, start_workers: StartWorkers) -> None:
    start_workers("cli_app")

    event_id = sent_id(stepq("send", "test/greet", "--data", '{"who": "ada"}'))

    assert await redis.exists(f"stepq:event:{event_id}") == 1
    [run_id] = await run_ids_for_event(redis, "greet", event_id)
    await wait_for_run(redis, run_id)

    listed = stepq("runs")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "FUNCTION", "STATUS"]
    [row] = [r for r in rows if r.startswith(run_id)]
    assert row.split()[1:3] == ["t-cli-greet", "completed"]

    as_json = stepq("runs", "--function", "greet", "--json")
    assert as_json.returncode == 0, as_json.stderr
    [record] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (record["run_id"], record["status"], record["output"]) == (run_id, "completed", "hello ada")
    assert record["event_ids"] == [event_id]

    assert stepq("runs", "--status", "failed").stdout.splitlines()[1:] == []

    shown = stepq("run", run_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"run       {run_id}" in lines
    assert "function  t-cli-greet" in lines
    assert "status    completed" in lines
    assert 'output    "hello ada"' in lines
    [step] = [line for line in lines if "greet" in line and "attempts=" in line]
    assert step.split()[1:4] == ["greet", "done", "attempts=1"]

    detail = stepq("run", run_id, "--json")
    assert detail.returncode == 0, detail.stderr
    view = json.loads(detail.stdout)
    assert (view["status"], view["output"]) == ("completed", "hello ada")
    assert [s["name"] for s in view["steps"]] == ["greet"]
    assert view["steps"][0]["memo"] == {"data": "hello ada"}


async def test_run_shows_the_error_of_a_failed_run(redis: Redis, start_workers: StartWorkers) -> None:
    start_workers("cli_app")
    event_id = sent_id(stepq("send", "test/refuse"))
    [run_id] = await run_ids_for_event(redis, "refuse", event_id)
    await wait_for_run(redis, run_id)

    shown = stepq("run", run_id)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "status    failed" in lines
    assert "error     NonRetriableError: not today" in lines
    failed = stepq("runs", "--status", "failed")
    assert any(row.startswith(run_id) for row in failed.stdout.splitlines())


async def test_usage_errors_exit_2_with_a_message_and_store_nothing(redis: Redis) -> None:
    unknown = stepq("run", "01NOSUCHRUN")
    assert unknown.returncode == 2
    assert "no run '01NOSUCHRUN'" in unknown.stderr

    not_json = stepq("send", "test/greet", "--data", "{who: ada}")
    assert not_json.returncode == 2
    assert "--data is not valid JSON" in not_json.stderr

    not_object = stepq("send", "test/greet", "--data", "[1, 2]")
    assert not_object.returncode == 2
    assert "--data must be a JSON object" in not_object.stderr

    reserved = stepq("send", "inngest/function.finished")
    assert reserved.returncode == 2
    assert "reserved" in reserved.stderr

    assert "Traceback" not in unknown.stderr + not_json.stderr + not_object.stderr + reserved.stderr
    assert await redis.dbsize() == 0
