"""Wire compatibility: an app written with Inngest's official Python SDK runs on stepq.

``tests/apps/official_app.py`` uses ``inngest`` from PyPI and its FastAPI handler, under uvicorn.
It is pointed at ``stepq api`` (``INNGEST_BASE_URL``), synced with a ``PUT`` as a deploy hook
would, and its runs are driven by ``stepq worker --http``: every step is a signed (production) or
unsigned (dev) HTTP call that the official SDK answers with its own opcodes.

Two stacks, one per class: dev mode (``INNGEST_DEV=1``, the API accepting any key) and production
mode (``INNGEST_DEV=0``: the SDK refuses unsigned calls, the API wants keys). They never run at the
same time, since both workers take jobs from the shared ``@http`` queue.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import inngest
import pytest
from redis.asyncio import Redis

from stepq.runtime.queries import RunView, get_run
from stepq.runtime.registry import Registry
from stepq.runtime.timeline import get_timeline
from tests.helpers import read_lines, run_ids_for_event, runs_of, sha1, wait_for_run
from tests.http_fixtures import (
    Service,
    Stack,
    dev_stack,
    start_http_worker,
    start_stack,
    stepq_cli,
    sync_app,
)

APP = "tests.apps.official_app:app"
APP_ID = "compat"
#: Every function the app serves, as stepq registers them (Inngest's composite ids), with the
#: failure handler the SDK adds for ``on_failure=``.
SLUGS = {
    f"{APP_ID}-{name}"
    for name in (
        "seq", "loop", "sleeper", "waiter", "child", "parent", "emitter", "receiver",
        "flaky", "declined", "fanout", "doomed", "doomed-failure", "bigstate", "cancellable",
    )
}  # fmt: skip
RUN_TIMEOUT = 60.0


def fn(name: str) -> str:
    return f"{APP_ID}-{name}"


async def post_event(api_url: str, name: str, data: dict[str, Any], key: str = "anykey") -> str:
    """What ``curl -X POST <api>/e/<key> -d '{...}'`` does; returns the stored event's id."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{api_url}/e/{key}", json={"name": name, "data": data})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == 200 and len(body["ids"]) == 1, body
    return str(body["ids"][0])


async def the_run(db: Redis, function: str, event_id: str) -> str:
    """The one run of ``function`` the event started."""
    run_ids = await run_ids_for_event(db, function, event_id)
    assert len(run_ids) == 1, f"event {event_id} started {len(run_ids)} runs of {function}, expected 1"
    return run_ids[0]


async def finished(db: Redis, run_id: str, stack: Stack) -> RunView:
    try:
        return await wait_for_run(db, run_id, timeout=RUN_TIMEOUT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.output()}") from None


async def wait_status(db: Redis, run_id: str, status: str, stack: Stack) -> RunView:
    try:
        return await wait_for_run(db, run_id, statuses=(status,), timeout=RUN_TIMEOUT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.output()}") from None


def step_names(view: RunView) -> list[str]:
    return [step.name for step in view.steps]


# --------------------------------------------------------------------------------------------------
# Dev mode
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``stepq api --dev``, ``stepq worker --http`` and the official-SDK app in dev mode, synced."""
    with dev_stack(tmp_path_factory.mktemp("compat-dev"), APP) as stack:
        yield stack


class TestOfficialSdkInDevMode:
    async def test_a_put_syncs_every_function_and_a_repeated_sync_is_not_modified(self, dev: Stack, db: Redis) -> None:
        records = {r.slug: r for r in await Registry(db).functions()}
        assert set(records) >= SLUGS, f"registered: {sorted(records)}"
        for slug in SLUGS:
            config = records[slug].config
            assert config["app_id"] == APP_ID
            assert config["url"].startswith(f"{dev.app.url}?"), config["url"]  # type: ignore[attr-defined]
            assert f"fnId={slug}" in config["url"]
        assert records[fn("flaky")].config["retries"] == 3
        # The SDK's failure handler: retries 0, triggered by inngest/function.failed for its function.
        failure = records[fn("doomed-failure")].config
        assert failure["retries"] == 0
        assert failure["triggers"] == [
            {"event": "inngest/function.failed", "expression": f"event.data.function_id == '{fn('doomed')}'"}
        ]

        again = sync_app(dev.app.url)  # type: ignore[attr-defined]
        assert again.status_code == 200, again.text
        assert again.json().get("modified") is False, again.text

    async def test_a_refused_sync_still_answers_200_so_a_deploy_hook_checks_ok(self, dev: Stack, db: Redis) -> None:
        """The SDK registers the URL it was reached at: reached at a link-local address, its sync is
        refused by stepq (400), and the SDK passes stepq's body on, with status 200 (README,
        "In production")."""
        before = {r.slug: r.config["url"] for r in await Registry(db).functions()}

        refused = httpx.put(dev.app.url, headers={"Host": "169.254.169.254"}, timeout=30.0)  # type: ignore[attr-defined]

        assert refused.status_code == 200, refused.text
        assert refused.json()["ok"] is False, refused.text
        assert "169.254.169.254" in refused.json()["error"], refused.text
        assert {r.slug: r.config["url"] for r in await Registry(db).functions()} == before
        accepted = sync_app(dev.app.url)  # type: ignore[attr-defined]
        assert (accepted.status_code, accepted.json()["ok"]) == (200, True), accepted.text

    async def test_sequential_steps_run_once_each_and_stepq_run_shows_the_output(
        self, dev: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "seq.log"
        event_id = await post_event(dev.api_url, "compat/seq", {"x": 4, "log": str(log)})
        run_id = await the_run(db, fn("seq"), event_id)
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output == {"a": 5, "b": 50, "c": {"sum": 55}, "x": 4, "run_id": run_id}
        assert step_names(view) == ["a", "b", "c"]
        assert all(step.attempts == 1 for step in view.steps)
        assert read_lines(log) == ["a", "b", "c"], "each step's code ran exactly once"

        cli = stepq_cli("run", run_id, "--json")
        assert cli.returncode == 0, cli.stderr
        shown = json.loads(cli.stdout)
        assert shown["status"] == "completed"
        assert shown["output"] == view.output
        assert [s["name"] for s in shown["steps"]] == ["a", "b", "c"]
        assert [s["memo"] for s in shown["steps"]] == [{"data": 5}, {"data": 50}, {"data": {"sum": 55}}]

    async def test_events_sent_with_the_official_client_start_runs(self, dev: Stack, db: Redis) -> None:
        sender = inngest.Inngest(app_id="compat-sender", is_production=False, event_api_base_url=dev.api_url)
        ids = await sender.send([inngest.Event(name="compat/seq", data={"x": n}) for n in (1, 2)])
        assert len(ids) == 2
        run_ids = [await the_run(db, fn("seq"), event_id) for event_id in ids]
        outputs = []
        for run_id in run_ids:
            view = await finished(db, run_id, dev)
            assert view.status == "completed", view.error
            outputs.append(view.output["c"])
        assert outputs == [{"sum": 22}, {"sum": 33}]

        # The synchronous client too.
        [sync_id] = await asyncio.to_thread(sender.send_sync, inngest.Event(name="compat/seq", data={"x": 0}))
        view = await finished(db, await the_run(db, fn("seq"), sync_id), dev)
        assert view.status == "completed" and view.output["c"] == {"sum": 11}

    async def test_a_loop_reusing_one_step_id_runs_each_iteration_once(
        self, dev: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "loop.log"
        event_id = await post_event(dev.api_url, "compat/loop", {"n": 4, "log": str(log)})
        view = await finished(db, await the_run(db, fn("loop"), event_id), dev)

        assert view.status == "completed", view.error
        assert view.output == [0, 1, 4, 9]
        # The SDK keys a repeated id by its position (sha1 of item, item:1, item:2, ...) and names
        # each as the user wrote it.
        assert [step.key for step in view.steps] == [sha1("item"), sha1("item:1"), sha1("item:2"), sha1("item:3")]
        assert step_names(view) == ["item"] * 4
        assert read_lines(log) == ["item 0", "item 1", "item 2", "item 3"]

    async def test_a_sleep_sleeps_then_the_run_continues(self, dev: Stack, db: Redis) -> None:
        event_id = await post_event(dev.api_url, "compat/sleep", {"seconds": 2})
        run_id = await the_run(db, fn("sleeper"), event_id)
        sleeping = await wait_status(db, run_id, "sleeping", dev)
        assert sleeping.wake_at_ms is not None
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output["after"] - view.output["before"] >= 2.0
        assert step_names(view) == ["before", "nap", "after"]

    async def test_wait_for_event_resumes_on_the_event_its_if_expression_matches(self, dev: Stack, db: Redis) -> None:
        event_id = await post_event(dev.api_url, "compat/wait", {"order": 7, "timeout": 60})
        run_id = await the_run(db, fn("waiter"), event_id)
        await wait_status(db, run_id, "waiting", dev)

        await post_event(dev.api_url, "compat/approve", {"order": 8, "by": "wrong order"})
        await post_event(dev.api_url, "compat/approve", {"order": 7, "by": "ada"})
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output == {"approval": {"order": 7, "by": "ada"}}

    async def test_wait_for_event_times_out_with_none(self, dev: Stack, db: Redis) -> None:
        event_id = await post_event(dev.api_url, "compat/wait", {"order": 9, "timeout": 2})
        run_id = await the_run(db, fn("waiter"), event_id)
        await wait_status(db, run_id, "waiting", dev)
        await post_event(dev.api_url, "compat/approve", {"order": 10})  # matches nothing
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output == {"approval": None}

    async def test_invoke_runs_the_child_and_returns_its_output(self, dev: Stack, db: Redis) -> None:
        event_id = await post_event(dev.api_url, "compat/parent", {"n": 21})
        run_id = await the_run(db, fn("parent"), event_id)
        view = await finished(db, run_id, dev)

        assert view.status == "completed", view.error
        assert view.output == {"child": {"doubled": 42, "event": "inngest/function.invoked"}}
        children = [r for r in await runs_of(db, fn("child")) if r.status == "completed"]
        assert any(r.output == {"doubled": 42, "event": "inngest/function.invoked"} for r in children)

    async def test_send_event_starts_the_functions_it_triggers(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "receiver.log"
        tag = secrets.token_hex(4)
        event_id = await post_event(dev.api_url, "compat/emit", {"tag": tag, "log": str(log)})
        view = await finished(db, await the_run(db, fn("emitter"), event_id), dev)

        assert view.status == "completed", view.error
        [sent_id] = view.output["ids"]
        received = await finished(db, await the_run(db, fn("receiver"), sent_id), dev)
        assert received.status == "completed", received.error
        assert received.output == {"tag": tag}
        assert read_lines(log) == ["received"]

    async def test_a_step_that_fails_once_is_retried_by_the_sdk_and_succeeds(
        self, dev: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "flaky.log"
        event_id = await post_event(dev.api_url, "compat/flaky", {"log": str(log)})
        view = await finished(db, await the_run(db, fn("flaky"), event_id), dev)

        assert view.status == "completed", view.error
        assert view.output == {"value": "succeeded on attempt 1"}
        assert read_lines(log) == ["attempt 0", "attempt 1"]
        [step] = view.steps
        assert step.name == "flaky-step"
        assert step.attempts == 2
        assert step.memo == {"data": "succeeded on attempt 1"}

    async def test_a_non_retriable_error_fails_the_run_at_once(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "declined.log"
        event_id = await post_event(dev.api_url, "compat/declined", {"log": str(log)})
        run_id = await the_run(db, fn("declined"), event_id)
        view = await finished(db, run_id, dev)

        assert view.status == "failed"
        assert isinstance(view.error, dict), view.error
        assert "card declined" in str(view.error.get("message")), view.error
        assert read_lines(log) == ["charge"], "retries 3, but a NonRetriableError is not retried"
        # inngest-py (0.5) bubbles a step's NonRetriableError up as the function's error (500 and
        # X-Inngest-No-Retry, no opcode): nothing on the wire names the step, so the run failed in
        # the function's own code, at its first attempt (in-process, stepq names the step)
        timeline = await get_timeline(db, run_id)
        assert timeline is not None and timeline.failed_at is not None
        assert (timeline.failed_at.key, timeline.failed_at.attempt) == (None, 1), timeline.failed_at
        cli = stepq_cli("run", run_id)
        assert cli.returncode == 0, cli.stderr
        assert "card declined" in cli.stdout

    async def test_parallel_steps_each_run_once_and_join(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "parallel.log"
        event_id = await post_event(dev.api_url, "compat/parallel", {"log": str(log)})
        view = await finished(db, await the_run(db, fn("fanout"), event_id), dev)

        assert view.status == "completed", view.error
        assert view.output == [0, 10, 20, 30]
        assert sorted(read_lines(log)) == ["p0", "p1", "p2"]
        assert sorted(step_names(view)) == ["p0", "p1", "p2", "total"]

    async def test_on_failure_runs_once_when_the_run_fails(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "doomed.log"
        event_id = await post_event(dev.api_url, "compat/doomed", {"log": str(log)})
        run_id = await the_run(db, fn("doomed"), event_id)
        view = await finished(db, run_id, dev)

        assert view.status == "failed"
        assert "doomed from the start" in str(view.error), view.error

        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            handlers = [r for r in await runs_of(db, fn("doomed-failure")) if r.status in ("completed", "failed")]
            if handlers or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert len(handlers) == 1, f"failure handler runs: {handlers}\n{dev.output()}"
        [handler] = handlers
        assert handler.status == "completed", handler.error
        assert handler.output["event"] == "inngest/function.failed"
        assert handler.output["function_id"] == fn("doomed")
        assert handler.output["run_id"] == run_id
        assert "doomed from the start" in str(handler.output["message"])
        # retries=1: two attempts, then the handler, once.
        assert read_lines(log) == ["doomed attempt 0", "doomed attempt 1", "on_failure"]
        assert len(await runs_of(db, fn("doomed-failure"))) == 1

    async def test_state_over_4_mib_is_fetched_by_the_sdk_from_the_api(
        self, dev: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "big.log"
        event_id = await post_event(dev.api_url, "compat/bigstate", {"tag": "big", "log": str(log)})
        view = await finished(db, await the_run(db, fn("bigstate"), event_id), dev)

        assert view.status == "completed", view.error
        assert view.output == {"sizes": [1536 * 1024] * 3, "last": "tail", "tag": "big"}
        assert step_names(view) == ["blob0", "blob1", "blob2", "tail"]
        lines = read_lines(log)
        assert lines.count("tail") == 1, lines
        # The calls after the third blob were over 4 MiB: they came without the memo, and the SDK
        # fetched it (the run could not have completed otherwise).
        assert lines[0] == "use_api steps=0", lines
        assert all(line == "use_api steps=0" for line in lines if line != "tail"), lines

    async def test_a_cancel_rule_cancels_the_matching_run_only(self, dev: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "orders.log"
        kept = await the_run(db, fn("cancellable"), await post_event(dev.api_url, "compat/order.placed", {"order": 1}))
        doomed = await the_run(
            db, fn("cancellable"), await post_event(dev.api_url, "compat/order.placed", {"order": 2, "log": str(log)})
        )
        await wait_status(db, doomed, "sleeping", dev)
        await wait_status(db, kept, "sleeping", dev)

        await post_event(dev.api_url, "compat/order.cancelled", {"order": 2})
        view = await wait_status(db, doomed, "cancelled", dev)
        assert view.status == "cancelled"
        still = await get_run(db, kept, with_steps=False)
        assert still is not None and still.status == "sleeping", still
        assert read_lines(log) == []


# --------------------------------------------------------------------------------------------------
# Production mode: signed calls
# --------------------------------------------------------------------------------------------------

SIGNING_KEY = f"signkey-test-{secrets.token_hex(32)}"
WRONG_KEY = f"signkey-test-{secrets.token_hex(32)}"
EVENT_KEY = "compat-event-key"


@pytest.fixture(scope="class")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API with event keys and the signing key, a worker that signs, the app in production mode."""
    stack = start_stack(
        tmp_path_factory.mktemp("compat-prod"),
        APP,
        api_env={"STEPQ_EVENT_KEYS": EVENT_KEY, "STEPQ_SIGNING_KEY": SIGNING_KEY},
        worker_env={"STEPQ_SIGNING_KEY": SIGNING_KEY},
        app_env={"INNGEST_DEV": "0", "INNGEST_SIGNING_KEY": SIGNING_KEY, "INNGEST_EVENT_KEY": EVENT_KEY},
        dev=False,
    )
    try:
        response = sync_app(stack.app.url)  # type: ignore[attr-defined]
        assert response.status_code == 200, f"sync failed: {response.status_code} {response.text}\n{stack.output()}"
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def wrong_key_worker(prod: Stack) -> Iterator[Service]:
    """For one test, the stack's worker is replaced by one signing with another key."""
    prod.worker.stop()
    worker = start_http_worker(prod.directory, env={"STEPQ_SIGNING_KEY": WRONG_KEY}, name="wrong-key-worker")
    try:
        yield worker
    finally:
        worker.stop()
        prod.worker = start_http_worker(prod.directory, env={"STEPQ_SIGNING_KEY": SIGNING_KEY}, name="http-worker-2")


def register_payload(app_url: str) -> dict[str, Any]:
    return {
        "url": app_url,
        "appName": "intruder",
        "sdk": "py:v0.5.19",
        "framework": "fast_api",
        "functions": [
            {
                "id": "intruder-f",
                "name": "f",
                "triggers": [{"event": "compat/seq"}],
                "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": app_url}}},
            }
        ],
    }


class TestOfficialSdkInProductionMode:
    async def test_the_sync_carried_the_hashed_signing_key_and_register_refuses_others(
        self, prod: Stack, db: Redis
    ) -> None:
        from stepq.signing import hash_signing_key

        records = {r.slug for r in await Registry(db).functions()}
        assert records >= SLUGS, f"the app's own sync registered: {sorted(records)}"

        url = f"{prod.api_url}/fn/register"
        payload = register_payload("http://127.0.0.1:9/api/inngest")
        async with httpx.AsyncClient(timeout=30) as http:
            unsigned = await http.post(url, json=payload)
            wrong = await http.post(
                url, json=payload, headers={"Authorization": f"Bearer {hash_signing_key(WRONG_KEY)}"}
            )
            raw_key = await http.post(url, json=payload, headers={"Authorization": f"Bearer {SIGNING_KEY}"})
            event_key = await http.post(url, json=payload, headers={"Authorization": f"Bearer {EVENT_KEY}"})
        for refused in (unsigned, wrong, raw_key, event_key):
            assert refused.status_code == 401, refused.text
        assert "intruder-f" not in {r.slug for r in await Registry(db).functions()}

    async def test_the_app_refuses_unsigned_calls(self, prod: Stack) -> None:
        """Production mode is really on: a call without a signature is refused before any code runs."""
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                f"{prod.app.url}?fnId={fn('seq')}&stepId=step",  # type: ignore[attr-defined]
                json={"event": {"name": "compat/seq", "data": {"x": 1}}, "events": [], "steps": {}, "ctx": {}},
            )
        assert response.status_code == 401, response.text

    async def test_the_app_accepts_a_call_signed_as_inngest_signs(self, prod: Stack, tmp_path: Path) -> None:
        """The test's keys and the SDK agree: a body signed over its JCS-canonical form (as Inngest's
        executor sends it) is accepted, whatever the key order of the bytes on the wire."""
        from stepq.signing import canonical_json, sign

        log = tmp_path / "direct.log"
        payload = {
            "version": 2,
            "use_api": False,
            "steps": {},
            "events": [],
            "event": {"name": "compat/seq", "data": {"x": 1, "log": str(log)}, "ts": int(time.time() * 1000)},
            "ctx": {
                "run_id": "01TESTRUN",
                "attempt": 0,
                "max_attempts": 3,
                "disable_immediate_execution": False,
                "stack": {"stack": [], "current": 0},
            },
        }
        body = json.dumps(payload).encode()  # keys not in canonical order
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                f"{prod.app.url}?fnId={fn('seq')}&stepId=step",  # type: ignore[attr-defined]
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Inngest-Signature": sign(canonical_json(payload), SIGNING_KEY, int(time.time())),
                },
            )
        assert response.status_code == 206, response.text
        assert response.json()[0]["displayName"] == "a"
        assert read_lines(log) == ["a"]

    async def test_signed_calls_are_accepted_and_runs_complete(self, prod: Stack, db: Redis, tmp_path: Path) -> None:
        log = tmp_path / "seq.log"
        event_id = await post_event(prod.api_url, "compat/seq", {"x": 1, "log": str(log)}, key=EVENT_KEY)
        view = await finished(db, await the_run(db, fn("seq"), event_id), prod)
        assert view.status == "completed", view.error
        assert view.output["c"] == {"sum": 22}
        assert read_lines(log) == ["a", "b", "c"]

        # A step that needs the app to call the API (send_event, with the event key) works too.
        emit_id = await post_event(prod.api_url, "compat/emit", {"tag": "prod"}, key=EVENT_KEY)
        emitted = await finished(db, await the_run(db, fn("emitter"), emit_id), prod)
        assert emitted.status == "completed", emitted.error
        [sent_id] = emitted.output["ids"]
        received = await finished(db, await the_run(db, fn("receiver"), sent_id), prod)
        assert received.output == {"tag": "prod"}

    async def test_the_sdk_fetches_large_state_from_the_api_with_its_hashed_key(
        self, prod: Stack, db: Redis, tmp_path: Path
    ) -> None:
        log = tmp_path / "big.log"
        event_id = await post_event(prod.api_url, "compat/bigstate", {"tag": "p", "log": str(log)}, key=EVENT_KEY)
        view = await finished(db, await the_run(db, fn("bigstate"), event_id), prod)

        assert view.status == "completed", view.error
        assert view.output == {"sizes": [1536 * 1024] * 3, "last": "tail", "tag": "p"}
        assert "use_api steps=0" in read_lines(log)
        # Without the key, the same reads are refused.
        async with httpx.AsyncClient(timeout=30) as http:
            for what in ("batch", "actions"):
                refused = await http.get(f"{prod.api_url}/v0/runs/{view.run_id}/{what}")
                assert refused.status_code == 401, refused.text

    async def test_a_worker_signing_with_the_wrong_key_is_refused_and_the_run_fails_clearly(
        self, prod: Stack, db: Redis, tmp_path: Path, wrong_key_worker: Service
    ) -> None:
        log = tmp_path / "seq.log"
        event_id = await post_event(prod.api_url, "compat/seq", {"x": 1, "log": str(log)}, key=EVENT_KEY)
        run_id = await the_run(db, fn("seq"), event_id)
        view = await finished(db, run_id, prod)

        assert view.status == "failed", f"a run whose every call the SDK refused must not succeed: {view}"
        assert read_lines(log) == [], "the SDK ran no code for a badly signed call"
        message = str(view.error)
        assert "401" in message or "signature" in message.lower(), view.error
        # seq has retries=2: three refused attempts, then the run failed (the line of the invocation
        # that ended the run is written just after the run's state changed).
        deadline = time.monotonic() + 10
        while True:
            calls = [e for e in wrong_key_worker.logs() if e.get("event") == "invocation" and e.get("run_id") == run_id]
            if (calls and calls[-1].get("outcome") == "failed") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert [c["outcome"] for c in calls] == ["function-error-retry", "function-error-retry", "failed"], calls
