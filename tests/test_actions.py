"""Operator actions (runtime/actions.py): replay, resume from a step, bulk cancel and replay by
filter, the CLI's and the HTTP API's forms of them, on real workers (tests/apps/actions_app.py,
whose step outputs are encrypted)."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import stepq
from stepq.encryption import KEYS_ENV
from stepq.runtime import keys
from stepq.runtime.actions import Actions, BadRequest, RunConflict, RunNotFound
from tests.helpers import StartWorkers, read_lines, sha1, start_run, wait_for_run

KEY = secrets.token_hex(32)
ENV = {KEYS_ENV: KEY}


def pipeline_data(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"log": str(tmp_path / f"{name}.log"), "flag": str(tmp_path / f"{name}.flag"), "out": str(tmp_path / f"{name}.json")}


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
    assert result == {"one": "one-done", "group": ["p1-done", "p2-done", "p3-done"], "gate": "gate-done", "last": "last-done"}
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
