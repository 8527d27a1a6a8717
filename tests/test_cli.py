"""The ``stepq`` command: send, runs, run, against the test Redis, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess

from redis.asyncio import Redis

from stepq.runtime import keys
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

    assert await redis.exists(keys.event(event_id)) == 1
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
    # the step that raised it is the step the run failed at, with its attempt and error
    [check] = [line for line in lines if ". check " in line]
    assert check.split()[2:4] == ["failed", "attempts=1"], check
    assert check.endswith("last error: NonRetriableError: not today"), check
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


async def test_runs_status_accepts_every_status_a_run_can_have(redis: Redis, start_workers: StartWorkers) -> None:
    for status in ("queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled"):
        listed = stepq("runs", "--status", status)
        assert listed.returncode == 0, f"--status {status}: {listed.stderr}"

    start_workers("cli_app")
    event_id = sent_id(stepq("send", "test/ask", "--data", '{"id": 7}'))
    [run_id] = await run_ids_for_event(redis, "approval", event_id)
    await wait_for_run(redis, run_id, statuses=("waiting",))

    waiting = stepq("runs", "--status", "waiting")
    assert waiting.returncode == 0, waiting.stderr
    [row] = waiting.stdout.splitlines()[1:]
    assert row.split()[:3] == [run_id, "t-cli-approval", "waiting"]
    assert stepq("runs", "--status", "sleeping").stdout.splitlines()[1:] == []

    sent_id(stepq("send", "test/approved", "--data", '{"id": 7}'))
    view = await wait_for_run(redis, run_id)
    assert (view.status, view.output) == ("completed", True)
    assert stepq("runs", "--status", "waiting").stdout.splitlines()[1:] == []

    unknown = stepq("runs", "--status", "asleep")
    assert unknown.returncode == 2
    assert "invalid choice: 'asleep'" in unknown.stderr


async def test_run_shows_the_function_level_retries(redis: Redis, start_workers: StartWorkers) -> None:
    start_workers("cli_app")
    event_id = sent_id(stepq("send", "test/flaky"))
    [run_id] = await run_ids_for_event(redis, "flaky", event_id)
    await wait_for_run(redis, run_id)

    lines = stepq("run", run_id).stdout.splitlines()

    assert "status    completed" in lines
    assert "retries   3 (each step's, and the function's own)" in lines
    # one retry before the step and one after it: counted over the whole run
    assert "retried   2 times after errors outside steps (last: ValueError: first attempt failed)" in lines
    view = json.loads(stepq("run", run_id, "--json").stdout)
    assert (view["retries"], view["function_retries"]) == (3, 2)
    assert view["function_error"] == "ValueError: first attempt failed"
    assert [s["name"] for s in view["steps"]] == ["half-way"]

    [greet_id] = await run_ids_for_event(redis, "greet", sent_id(stepq("send", "test/greet", "--data", '{"who": "x"}')))
    await wait_for_run(redis, greet_id)
    assert not [line for line in stepq("run", greet_id).stdout.splitlines() if line.startswith("retried")]


async def test_run_shows_the_duration_of_each_parallel_step(redis: Redis, start_workers: StartWorkers) -> None:
    start_workers("cli_app")
    event_id = sent_id(stepq("send", "test/fan"))
    [run_id] = await run_ids_for_event(redis, "fan", event_id)
    await wait_for_run(redis, run_id)

    shown = stepq("run", run_id)

    assert shown.returncode == 0, shown.stderr
    assert "output    [1, 2, null]" in shown.stdout.splitlines()
    steps = {line.split()[1]: line.split() for line in shown.stdout.splitlines() if "attempts=" in line}
    assert sorted(steps) == ["nap", "slow-1", "slow-2"]
    for name, fields in steps.items():
        assert fields[-1] == "ms" or fields[-1] == "s", f"step {name} shows no duration: {fields}"
    view = json.loads(stepq("run", run_id, "--json").stdout)
    durations = {step["name"]: step["duration_ms"] for step in view["steps"]}
    assert all(isinstance(ms, int) for ms in durations.values()), durations
    assert durations["nap"] >= 300  # a sleep took at least its duration
