"""Operator actions (runtime/actions.py): replay, resume from a step, bulk cancel and replay by
filter, the CLI's and the HTTP API's forms of them, on real workers (tests/apps/actions_app.py,
whose step outputs are encrypted)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

import stepq
from stepq.encryption import KEYS_ENV
from stepq.runtime import keys
from stepq.runtime.actions import Actions, BadRequest, RunConflict, RunLinks, RunNotFound
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.queries import RunFilter, RunView
from stepq.runtime.run_status import RunStatus
from stepq.runtime.store import now_ms
from stepq.signing import bearer
from stepq.workers.cli import main
from tests.helpers import REDIS_URL, ROOT, STEPQ_CLI, TERMINAL, StartWorkers, read_lines, sha1, start_run, wait_for_run

KEY = secrets.token_hex(32)
ENV = {KEYS_ENV: KEY}


def pipeline_data(tmp_path: Path, name: str) -> dict[str, Any]:
    return {
        "log": str(tmp_path / f"{name}.log"),
        "flag": str(tmp_path / f"{name}.flag"),
        "out": str(tmp_path / f"{name}.json"),
    }


async def memo_of(redis: Redis, run_id: str) -> dict[str, bytes]:
    raw: dict[bytes, bytes] = await redis.hgetall(keys.memo(run_id))  # type: ignore[misc]
    return {k.decode(): v for k, v in raw.items()}


async def test_replay_and_resume_of_a_failed_encrypted_run(
    redis: Redis, start_workers: StartWorkers, sender: stepq.Client, tmp_path: Path
) -> None:
    start_workers("actions_app", env=ENV)
    actions = Actions.on(redis)
    data = pipeline_data(tmp_path, "run")
    log, flag = Path(data["log"]), Path(data["flag"])
    run_id = await start_run(sender, redis, "pipeline", "actions/pipeline", data)
    failed = await wait_for_run(redis, run_id)
    assert failed.status == "failed", failed
    lines = read_lines(log)
    assert (lines[0], sorted(lines[1:4]), lines[4:]) == ("one", ["p1", "p2", "p3"], ["gate-refused"])

    # the cause is fixed: a replay runs everything again, from the start, and completes
    flag.write_text("set")
    log.write_text("")
    replayed = await actions.replay(run_id)
    assert (replayed.kind, replayed.source_run_id) == ("replay", run_id)
    done = await wait_for_run(redis, replayed.run_id)
    assert done.status == "completed", done.error
    assert sorted(read_lines(log)) == ["gate", "last", "one", "p1", "p2", "p3"]
    assert done.event_ids == failed.event_ids
    links = await actions.links(replayed.run_id)
    assert links is not None and links.replay_of == run_id

    # resume from the gate (after a sleep and a parallel group): nothing before it runs again
    log.write_text("")
    resumed = await actions.resume(run_id, "gate")
    assert (resumed.kind, resumed.from_step, resumed.kept_steps) == ("resume", sha1("gate"), 5)
    done = await wait_for_run(redis, resumed.run_id)
    assert done.status == "completed", done.error
    assert read_lines(log) == ["gate", "last"]
    result = json.loads(Path(data["out"]).read_text())
    assert result == {
        "one": "one-done",
        "group": ["p1-done", "p2-done", "p3-done"],
        "gate": "gate-done",
        "last": "last-done",
    }
    # the kept steps' values are the old run's bytes: still encrypted
    old, new = await memo_of(redis, run_id), await memo_of(redis, resumed.run_id)
    kept = [sha1(s) for s in ("one", "p1", "p2", "p3")]
    assert all(new[k] == old[k] and b"__ENCRYPTED__" in new[k] for k in kept)
    assert new[sha1("nap")] == old[sha1("nap")]
    assert [s.name for s in done.steps][:5] == [s.name for s in failed.steps][:5]
    raw = await redis.hgetall(keys.run(resumed.run_id))  # type: ignore[misc]
    assert raw[b"forked_from"].decode() == run_id and raw[b"from_step"].decode() == sha1("gate")
    links = await actions.links(run_id)
    assert links is not None and links.replays == (replayed.run_id, resumed.run_id)

    # resume from inside the group: the steps committed before it are kept, it and the rest re-run
    log.write_text("")
    order = [s.name for s in failed.steps]
    resumed = await actions.resume(run_id, "p2")
    done = await wait_for_run(redis, resumed.run_id)
    assert done.status == "completed", done.error
    rerun = [name for name in order[order.index("p2") : 5]]
    assert sorted(read_lines(log)) == sorted([*rerun, "gate", "last"])

    # refusals
    with pytest.raises(BadRequest, match="is not a step of run"):
        await actions.resume(run_id, "nowhere")
    with pytest.raises(RunNotFound):
        await actions.replay("01NOSUCHRUN0000000000000000")
    sleepy = await start_run(sender, redis, "sleepy", "actions/sleepy", {})
    await wait_for_run(redis, sleepy, ("sleeping",))
    with pytest.raises(RunConflict, match="sleeping"):
        await actions.replay(sleepy)
    assert (await actions.cancel(sleepy)).cancelled
    assert (await actions.cancel(sleepy)).outcome == "done"
    # the sleep it was cancelled in is the step it stopped at: shown unfinished, and resumed from
    view = await wait_for_run(redis, sleepy)
    assert [(s.name, s.done) for s in view.steps] == [("long", False)]
    again = await actions.resume(sleepy, "long")
    assert (again.from_step_name, again.kept_steps) == ("long", 0)
    assert (await actions.cancel(again.run_id)).cancelled

    # a step that raised a NonRetriableError is the step its run failed at: resumed from, it runs
    # again (the steps before it kept) and, with the cause fixed, completes
    data = pipeline_data(tmp_path, "declined")
    declined = await start_run(sender, redis, "declined", "actions/declined", data)
    view = await wait_for_run(redis, declined)
    assert view.status == "failed" and read_lines(Path(data["log"])) == ["one", "charge-refused"]
    Path(data["flag"]).write_text("set")
    again = await actions.resume(declined, "charge")
    assert (again.from_step, again.from_step_name, again.kept_steps) == (sha1("charge"), "charge", 1)
    done = await wait_for_run(redis, again.run_id)
    assert done.status == "completed", done.error
    assert read_lines(Path(data["log"])) == ["one", "charge-refused", "charge"]
    assert [(s.name, s.attempts, s.error) for s in done.steps] == [("one", 1, None), ("charge", 1, None)]


async def wait_all(redis: Redis, run_ids: list[str], statuses: tuple[str, ...] = TERMINAL) -> list[RunView]:
    return [await wait_for_run(redis, run_id, statuses) for run_id in run_ids]


async def start_runs(
    sender: stepq.Client, redis: Redis, function: str, name: str, data: dict[str, Any], n: int
) -> list[str]:
    return [await start_run(sender, redis, function, name, data) for _ in range(n)]


async def test_bulk_replay_and_cancel_do_what_their_preview_counted_while_events_arrive(
    redis: Redis, start_workers: StartWorkers, sender: stepq.Client, tmp_path: Path
) -> None:
    start_workers("actions_app", env=ENV)
    actions = Actions.on(redis)
    data = pipeline_data(tmp_path, "doomed")
    failed = await start_runs(sender, redis, "doomed", "actions/doomed", data, 5)
    sleeping = await start_runs(sender, redis, "sleepy", "actions/sleepy", {}, 4)
    await wait_all(redis, failed)
    await wait_all(redis, sleeping, ("sleeping",))
    cut = now_ms()
    await asyncio.sleep(0.01)

    async def keep_sending() -> None:  # runs created after the cut, while the bulk actions work
        for _ in range(10):
            await sender.send([stepq.Event(name="actions/doomed", data=data), stepq.Event(name="actions/sleepy")])
            await asyncio.sleep(0.02)

    background = asyncio.create_task(keep_sending())
    doomed_filter = RunFilter(function="doomed", status=RunStatus.FAILED, until_ms=cut)
    preview = await actions.preview(doomed_filter)
    assert (preview.count, preview.capped) == (5, False)
    Path(data["flag"]).write_text("set")  # the cause is fixed
    replayed = await actions.bulk_replay(doomed_filter)
    assert (replayed.matched, replayed.done, replayed.skipped) == (5, 5, {})
    assert sorted(replayed.done_run_ids) == sorted(failed)
    for old, new in zip(replayed.done_run_ids, replayed.new_run_ids, strict=True):
        done = await wait_for_run(redis, new)
        assert done.status == "completed", done.error
        assert (await actions.links(new)) == RunLinks(replay_of=old)

    sleepy_filter = RunFilter(function="sleepy", until_ms=cut)
    assert (await actions.bulk_cancel(sleepy_filter, dry_run=True)).matched == 4
    cancelled = await actions.bulk_cancel(sleepy_filter, cap=3)
    assert (cancelled.matched, cancelled.capped, cancelled.done) == (3, True, 3)
    cancelled = await actions.bulk_cancel(sleepy_filter)
    assert (cancelled.matched, cancelled.done, len(cancelled.skipped)) == (4, 1, 3)
    assert set(cancelled.skipped.values()) == {"already ended"}
    assert {v.status for v in await wait_all(redis, sleeping)} == {"cancelled"}
    await background

    # skipped by a bulk replay: a run that still runs
    replay_sleepy = await actions.bulk_replay(
        RunFilter(function="sleepy", status=RunStatus.SLEEPING, since_ms=cut), cap=2
    )
    assert replay_sleepy.done == 0 and all("sleeping" in why for why in replay_sleepy.skipped.values())
    with pytest.raises(BadRequest, match="filter"):
        await actions.preview(RunFilter())

    sent = await actions.send_test_event("actions/doomed", data)
    [(run_id, slug)] = sent.runs.items()
    assert slug == "t-actions-doomed"
    assert (await wait_for_run(redis, run_id)).event_ids == [sent.event_id]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPQ_CLI, *args, "--redis-url", REDIS_URL], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


async def cli_here(*args: str) -> subprocess.CompletedProcess[str]:
    """``cli`` in this process (a thread: the command runs its own event loop), to save a start."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main([*args, "--redis-url", REDIS_URL])

    code = await asyncio.to_thread(run)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def answer(result: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    assert result.returncode == code, result.stderr
    return json.loads(result.stdout)


async def test_the_cli_replays_resumes_and_acts_by_filter_only_with_yes(
    redis: Redis, start_workers: StartWorkers, sender: stepq.Client, tmp_path: Path
) -> None:
    start_workers("actions_app", env=ENV)
    data = pipeline_data(tmp_path, "cli")
    run_id = await start_run(sender, redis, "pipeline", "actions/pipeline", data)
    assert (await wait_for_run(redis, run_id)).status == "failed"
    Path(data["flag"]).write_text("set")

    replayed = answer(cli("replay", run_id))
    assert (replayed["kind"], replayed["source_run_id"]) == ("replay", run_id)
    assert answer(await cli_here("run", replayed["run_id"], "--json"))["replay_of"] == run_id
    resumed = answer(await cli_here("replay", run_id, "--from-step", "gate"))
    assert (resumed["kind"], resumed["from_step_name"], resumed["kept_steps"]) == ("resume", "gate", 5)
    for new in (replayed["run_id"], resumed["run_id"]):
        assert (await wait_for_run(redis, new)).status == "completed"
    assert (await wait_for_run(redis, run_id)).replays == [replayed["run_id"], resumed["run_id"]]
    shown = (await cli_here("run", resumed["run_id"])).stdout
    assert f"resumes   {run_id} from step {sha1('gate')}" in shown

    sleeping = await start_runs(sender, redis, "sleepy", "actions/sleepy", {}, 2)
    await wait_all(redis, sleeping, ("sleeping",))
    bulk = ("cancel", "--function", "sleepy", "--status", "sleeping", "--since", "1h")
    unconfirmed = cli(*bulk)
    assert answer(unconfirmed, 2)["count"] == 2
    assert "add --yes" in unconfirmed.stderr
    assert answer(await cli_here(*bulk, "--dry-run"))["count"] == 2
    assert {v.status for v in await wait_all(redis, sleeping, ("sleeping",))} == {"sleeping"}
    done = answer(await cli_here(*bulk, "--yes"))
    assert (done["done"], sorted(done["done_run_ids"])) == (2, sorted(sleeping))
    assert {v.status for v in await wait_all(redis, sleeping)} == {"cancelled"}

    for wrong, message in (
        (("replay",), "give RUN_ID, or a filter"),
        (("replay", run_id, "--status", "failed"), "not both"),
        (("replay", "--function", "pipeline", "--since", "yesterday"), "--since: cannot read"),
        (("replay", run_id, "--from-step", "nowhere"), "is not a step of run"),
        (("cancel", sleeping[0]), "was not cancelled"),
    ):
        refused = await cli_here(*wrong)
        assert refused.returncode == 2 and message in refused.stderr, (wrong, refused.stderr)


SIGNING_KEY = "signkey-test-0123456789abcdef0123456789abcdef"


async def test_the_api_acts_on_runs_and_refuses_with_the_right_status(
    redis: Redis, start_workers: StartWorkers, sender: stepq.Client, tmp_path: Path
) -> None:
    start_workers("actions_app", env=ENV)
    data = pipeline_data(tmp_path, "api")
    failed = await start_runs(sender, redis, "doomed", "actions/doomed", data, 2)
    sleepy = await start_run(sender, redis, "sleepy", "actions/sleepy", {})
    await wait_all(redis, failed)
    await wait_for_run(redis, sleepy, ("sleeping",))
    settings = ApiSettings(event_keys=("event-key",), signing_key=SIGNING_KEY)
    auth = {"authorization": bearer(SIGNING_KEY)}
    with ApiServer(REDIS_URL, settings=settings) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30) as http:
            preview = await http.post(
                "/v0/runs/replay", json={"function": "doomed", "status": "failed", "dry_run": True}
            )
            assert preview.json() == {**preview.json(), "matched": 2, "done": 0, "dry_run": True}
            Path(data["flag"]).write_text("set")
            bulk = await http.post("/v0/runs/replay", json={"function": "doomed", "status": "failed", "since": "1h"})
            assert (bulk.status_code, bulk.json()["done"]) == (200, 2), bulk.text
            for new in bulk.json()["new_run_ids"]:
                assert (await wait_for_run(redis, new)).status == "completed"
            replay = await http.post(f"/v0/runs/{failed[0]}/replay")
            assert replay.status_code == 200, replay.text
            assert replay.json()["source_run_id"] == failed[0]
            resume = await http.post(f"/v0/runs/{failed[0]}/resume", json={"step": "try"})
            assert resume.status_code == 200, resume.text
            assert resume.json()["kept_steps"] == 0
            for new in (replay.json()["run_id"], resume.json()["run_id"]):
                assert (await wait_for_run(redis, new)).status == "completed"

            refusals = [
                (f"/v0/runs/{sleepy}/replay", None, 409, "sleeping"),
                (f"/v0/runs/{failed[0]}/resume", {"step": "nowhere"}, 400, "is not a step of run"),
                (f"/v0/runs/{failed[0]}/resume", {"stop": "try"}, 400, "body.stop: unknown field"),
                ("/v0/runs/01NOSUCHRUN0000000000000000/replay", None, 404, "no run"),
                ("/v0/runs/01NOSUCHRUN0000000000000000/cancel", None, 404, "no run"),
                (f"/v0/runs/{failed[0]}/cancel", None, 409, "ended already"),
                ("/v0/runs/cancel", {"status": "asleep"}, 400, "body.status: unknown status"),
                ("/v0/runs/cancel", {}, 400, "filter: give at least one"),
                ("/v0/runs/replay", {"function": "doomed", "dry_run": "yes"}, 400, "body.dry_run"),
            ]
            for path, body, status, message in refusals:
                refused = await http.post(path, json=body)
                assert refused.status_code == status and message in refused.json()["error"], (path, refused.text)
            cancel = await http.post(f"/v0/runs/{sleepy}/cancel", json={"reason": "enough"})
            assert cancel.json() == {"run_id": sleepy, "outcome": "cancelled", "cancelled": True}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
            for path in (f"/v0/runs/{failed[0]}/replay", "/v0/runs/cancel"):
                refused = await anonymous.post(
                    path, json={"function": "doomed"}, headers={"authorization": "Bearer event-key"}
                )
                assert refused.status_code == 401, refused.text
    assert (await wait_for_run(redis, sleepy)).error == {"name": "Cancelled", "message": "enough", "stack": ""}
