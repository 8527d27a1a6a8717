"""The dashboard over HTTP (httpx against the real API under uvicorn on loopback, runs of a real
worker): every page renders with data, filters work, event data is escaped, actions act; login in
production mode; dev mode open on loopback only. The browser tests (Chromium) live elsewhere."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis

import stepq
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.timeline import get_timeline
from tests.helpers import REDIS_URL, StartWorkers, run_ids_for_event, wait_for_run
from tests.http_fixtures import free_port

SCRIPT = "<script>alert(1)</script>"
TOKEN = "dash-token-0123456789"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


async def waiting_for_paid(redis: Redis, run_id: str) -> str:
    """Once the fan-out run waits for its event: the id of the child run it invoked before."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        timeline = await get_timeline(redis, run_id)
        items = {item.kind: item for item in timeline.items} if timeline else {}
        if "wait" in items and items["wait"].status == "waiting":
            return str(items["invoke"].detail["child_run_id"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not reach its wait: {timeline}")


@pytest.fixture
def dev_api() -> Iterator[ApiServer]:
    with ApiServer(REDIS_URL, settings=ApiSettings(dev=True)) as server:
        yield server


@pytest.fixture
def prod_api() -> Iterator[ApiServer]:
    settings = ApiSettings(event_keys=("ek",), signing_key="signkey-test-abc", dashboard_token=TOKEN)
    with ApiServer(REDIS_URL, settings=settings) as server:
        yield server


async def test_pages_show_runs_events_and_functions_escaped_and_act(
    redis: Redis, start_workers: StartWorkers, sender: stepq.Client, dev_api: ApiServer
) -> None:
    start_workers("dashboard_app")
    [order_event] = await sender.send(stepq.Event(name="dash/order", data={"id": "o-1"}))
    [broken_event] = await sender.send(stepq.Event(name="dash/broken", data={}))
    [echo_event] = await sender.send(stepq.Event(name="dash/echo", data={"say": SCRIPT}))
    [nap_event] = await sender.send(stepq.Event(name="dash/nap", data={}))
    more_naps = await sender.send([stepq.Event(name="dash/nap", data={}), stepq.Event(name="dash/nap", data={})])
    [order] = await run_ids_for_event(redis, "t-dash-orders", order_event)
    [broken] = await run_ids_for_event(redis, "t-dash-broken", broken_event)
    [echo] = await run_ids_for_event(redis, "t-dash-echo", echo_event)
    [nap] = await run_ids_for_event(redis, "t-dash-napper", nap_event)
    [fan_event] = await sender.send(stepq.Event(name="dash/fanout", data={"order": 7}))
    [fan] = await run_ids_for_event(redis, "t-dash-fanout", fan_event)
    child = await waiting_for_paid(redis, fan)
    [paid_event] = await sender.send(stepq.Event(name="dash/paid", data={"order": 7}))
    for run_id in (order, broken, echo, fan):
        await wait_for_run(redis, run_id)
    await wait_for_run(redis, nap, statuses=("sleeping",))
    more_naps_runs = [(await run_ids_for_event(redis, "t-dash-napper", e))[0] for e in more_naps]
    for run_id in more_naps_runs:
        await wait_for_run(redis, run_id, statuses=("sleeping",))

    async with httpx.AsyncClient(base_url=dev_api.url, timeout=10) as http:
        root = await http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/ui/"

        runs = await http.get("/ui/runs")
        assert runs.status_code == 200
        assert all(run_id in runs.text for run_id in (order, broken, echo, nap))
        assert "default-src 'none'" in runs.headers["content-security-policy"]
        assert "script-src 'self'" in runs.headers["content-security-policy"]
        assert runs.headers["x-frame-options"] == "DENY"
        assert "<script>" not in re.sub(r'<script src="[^"]+" defer></script>', "", runs.text)
        for asset in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', runs.text):
            served = await http.get(asset)
            assert served.status_code == 200 and "immutable" in served.headers["cache-control"], asset
        assert (await http.get("/ui/static/../auth.py")).status_code == 404

        row = re.search(rf'<tr data-run-id="{order}">.*?</tr>', runs.text, re.S)
        assert row and "dash/order" in row.group(0) and "t-dash-orders" in row.group(0)
        failed = await http.get("/ui/runs/table", params={"status": "failed"})
        assert broken in failed.text and order not in failed.text and echo not in failed.text
        by_function = await http.get("/ui/runs", params={"function": "t-dash-orders"})
        assert order in by_function.text and broken not in by_function.text
        bad = await http.get("/ui/runs", params={"status": "exploded"})
        assert bad.status_code == 400 and "status:" in bad.text
        found = await http.get("/ui/runs", params={"q": echo})
        assert echo in found.text and order not in found.text
        by_event_id = await http.get("/ui/runs", params={"q": order_event})
        assert order in by_event_id.text and echo not in by_event_id.text
        by_event_name = await http.get("/ui/runs/table", params={"event": "dash/broken", "since": "1h"})
        assert broken in by_event_name.text and order not in by_event_name.text

        page = await http.get(f"/ui/runs/{order}")
        assert page.status_code == 200
        for text in ("load-order", "cool-down", "send-receipt", "receipt for o-1", "dash/order", 'class="wf-row'):
            assert text in page.text, text

        failure = (await http.get(f"/ui/runs/{broken}")).text
        assert "card declined by the bank" in failure
        assert re.search(r'id="failed-at">Raised by step <strong>charge</strong> on attempt 2\.', failure)
        charge = re.search(
            r'<div class="wf-row[^"]*" data-step="[0-9a-f]+" data-kind="step" data-status="failed">.*?</ol>',
            failure,
            re.S,
        )
        assert charge and "charge" in charge.group(0), failure
        assert charge.group(0).count("<li ") == 2 and charge.group(0).count("card declined by the bank") >= 2

        # a parallel group, an invoke linking to its child run, a wait with its condition and match
        fan_page = (await http.get(f"/ui/runs/{fan}")).text
        assert fan_page.count("grouped") >= 2  # left and right, side by side
        assert f'href="/ui/runs/{child}"' in fan_page and "invokes t-dash-echo" in fan_page
        assert "waits for event dash/paid if async.data.order == 7" in fan_page
        assert f"matched event {paid_event}" in fan_page

        echoed = (await http.get(f"/ui/runs/{echo}")).text
        assert SCRIPT not in echoed and "&lt;script&gt;alert(1)&lt;/script&gt;" in echoed

        events = await http.get("/ui/events")
        assert events.status_code == 200 and echo_event in events.text
        assert f'href="/ui/runs/{echo}"' in events.text  # the run it started
        assert SCRIPT not in events.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in events.text

        functions = (await http.get("/ui/functions")).text
        for slug in ("t-dash-orders", "t-dash-broken", "t-dash-napper", "t-dash-echo"):
            assert slug in functions
        assert "dash/order" in functions and "in-process" in functions
        row = re.search(r'<tr data-function="t-dash-broken">.*?</tr>', functions, re.S)
        assert row and 'status=failed&amp;since=1h">1<' in row.group(0)  # failed in the last hour
        row = re.search(r'<tr data-function="t-dash-napper">.*?</tr>', functions, re.S)
        assert row and "sleeping <strong>3</strong>" in row.group(0)

        missing = await http.get("/ui/runs/nope")
        assert missing.status_code == 404

        # actions: without the CSRF token refused; with it, the sleeping run is cancelled
        nap_page = (await http.get(f"/ui/runs/{nap}")).text
        assert "Cancel run" in nap_page
        refused = await http.post(f"/ui/runs/{nap}/cancel", data={})
        assert refused.status_code == 403
        token = csrf_of(nap_page)
        done = await http.post(f"/ui/runs/{nap}/cancel", data={"csrf_token": token})
        assert done.status_code == 303 and done.headers["location"] == f"/ui/runs/{nap}"
        assert (await wait_for_run(redis, nap)).status == "cancelled"
        assert "cancelled" in (await http.get(f"/ui/runs/{nap}")).text

        # a test event: bad JSON named inline (400), a good one sent (and starts a run)
        sent_bad = await http.post("/ui/events/send", data={"csrf_token": token, "name": "dash/echo", "data": "{nope"})
        assert sent_bad.status_code == 400 and "data: not valid JSON" in sent_bad.text
        sent = await http.post(
            "/ui/events/send", data={"csrf_token": token, "name": "dash/echo", "data": '{"say": "hi"}'}
        )
        assert sent.status_code == 303
        assert "sent" in (await http.get("/ui/events")).text

        # replay: a new run, linked both ways
        replayed = await http.post(f"/ui/runs/{broken}/replay", data={"csrf_token": token})
        assert replayed.status_code == 303
        replay = replayed.headers["location"].removeprefix("/ui/runs/")
        assert replay != broken
        replay_page = (await http.get(f"/ui/runs/{replay}")).text
        assert "Replay of" in replay_page and f'href="/ui/runs/{broken}"' in replay_page
        assert f"a replay of {broken}" in replay_page  # the flash message
        assert f'href="/ui/runs/{replay}"' in (await http.get(f"/ui/runs/{broken}")).text
        refused_replay = await http.post(f"/ui/runs/{more_naps_runs[0]}/replay", data={"csrf_token": token})
        assert refused_replay.status_code == 303
        assert "not replayed" in (await http.get(refused_replay.headers["location"])).text

        # resume from a step: the steps before it are kept
        resumed = await http.post(f"/ui/runs/{order}/resume", data={"csrf_token": token, "step": "send-receipt"})
        assert resumed.status_code == 303
        resume = resumed.headers["location"].removeprefix("/ui/runs/")
        assert (await wait_for_run(redis, resume)).status == "completed"
        resume_page = (await http.get(f"/ui/runs/{resume}")).text
        assert "Resumed from" in resume_page and f'href="/ui/runs/{order}"' in resume_page
        assert "at step send-receipt" in resume_page

        # bulk: a preview counts, the confirm acts
        params = {"preview": "1", "action": "cancel", "function": "t-dash-napper", "status": "sleeping"}
        preview = await http.get("/ui/bulk", params=params)
        assert preview.status_code == 200 and 'id="bulk-count">2<' in preview.text
        unfiltered = await http.get("/ui/bulk", params={"preview": "1", "action": "cancel"})
        assert unfiltered.status_code == 400 and "at least one filter" in unfiltered.text
        confirm = {"csrf_token": csrf_of(preview.text), "action": "cancel", "function": "t-dash-napper"}
        applied = await http.post("/ui/bulk", data={**confirm, "status": "sleeping"})
        assert applied.status_code == 303
        assert "bulk cancel: 2 of 2 run(s) cancelled" in (await http.get("/ui/bulk")).text
        for run_id in more_naps_runs:
            assert (await wait_for_run(redis, run_id)).status == "cancelled"
        replay_all = {**confirm, "action": "replay", "status": "cancelled"}
        assert (await http.post("/ui/bulk", data=replay_all)).status_code == 303
        assert "bulk replay: 3 of 3 run(s) replayed" in (await http.get("/ui/bulk")).text


async def test_production_mode_needs_a_login(redis: Redis, prod_api: ApiServer) -> None:
    async with httpx.AsyncClient(base_url=prod_api.url, timeout=10) as http:
        page = await http.get("/ui/runs?status=failed")
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/login?next=%2Fui%2Fruns%3Fstatus%3Dfailed"
        assert (await http.get("/ui/functions")).status_code == 303
        assert (await http.get("/ui/runs/table", headers={"HX-Request": "true"})).status_code == 401
        assert (await http.post("/ui/runs/x/cancel", data={"csrf_token": "x"})).status_code == 401
        assert (await http.post("/ui/events/send", data={"name": "a"})).status_code == 401

        form = await http.get("/ui/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        cookie = form.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        token = csrf_of(form.text)
        wrong = await http.post("/ui/login", data={"csrf_token": token, "token": "guess", "next": "/ui/functions"})
        assert wrong.status_code == 401 and "wrong token or key" in wrong.text
        assert (await http.get("/ui/functions")).status_code == 303
        no_csrf = await http.post("/ui/login", data={"token": TOKEN})
        assert no_csrf.status_code == 403

        good = await http.post("/ui/login", data={"csrf_token": token, "token": TOKEN, "next": "/ui/functions"})
        assert good.status_code == 303 and good.headers["location"] == "/ui/functions"
        assert (await http.get("/ui/functions")).status_code == 200
        runs = await http.get("/ui/runs")
        assert runs.status_code == 200 and "Log out" in runs.text
        session_token = csrf_of(runs.text)
        assert session_token != token  # a fresh CSRF token at login
        assert (await http.post("/ui/runs/x/cancel", data={})).status_code == 403
        assert (await http.post("/ui/runs/x/cancel", data={"csrf_token": token})).status_code == 403
        assert (await http.post("/ui/runs/x/cancel", headers={"X-CSRF-Token": session_token})).status_code == 303

        await http.post("/ui/logout", data={"csrf_token": session_token})
        assert (await http.get("/ui/runs")).status_code == 303

    async with httpx.AsyncClient(base_url=prod_api.url, timeout=10) as http:
        # the signing key works too; an open redirect does not
        token = csrf_of((await http.get("/ui/login")).text)
        login = {"csrf_token": token, "token": "signkey-test-abc", "next": "//evil.example/"}
        good = await http.post("/ui/login", data=login)
        assert good.status_code == 303 and good.headers["location"] == "/ui/"


def outward_address() -> str | None:
    """This machine's address on its outward interface (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


async def test_dev_mode_is_open_to_loopback_only(redis: Redis) -> None:
    with ApiServer(REDIS_URL, host="0.0.0.0", settings=ApiSettings(dev=True)) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            assert (await http.get("/ui/runs")).status_code == 200
            assert (await http.get("/ui/login")).status_code == 303  # nothing to log in to
            rebound = await http.get("/ui/runs", headers={"Host": "attacker.example"})
            assert rebound.status_code == 403 and "loopback" in rebound.text
            assert (await http.post("/ui/events/send", headers={"Host": "attacker.example"})).status_code == 403
        address = outward_address()
        if address is None:
            pytest.skip("no non-loopback address to reach the API from")
        async with httpx.AsyncClient(base_url=f"http://{address}:{server.port}", timeout=10) as http:
            remote = await http.get("/ui/runs")
            assert remote.status_code == 403 and "to this machine only" in remote.text
            assert (await http.get("/health")).status_code == 200  # the rest of the API is not the dashboard


async def test_sessions_over_https_get_secure_cookies() -> None:
    # The login page needs no Redis: the app is called in-process, as a TLS-terminating server would.
    settings = ApiSettings(event_keys=("ek",), dashboard_token=TOKEN)
    transport = httpx.ASGITransport(app=settings.create_app(REDIS_URL))
    async with httpx.AsyncClient(transport=transport, base_url="https://stepq.example") as http:
        cookie = (await http.get("/ui/login")).headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    async with httpx.AsyncClient(transport=transport, base_url="http://stepq.example") as http:
        assert "secure" not in (await http.get("/ui/login")).headers["set-cookie"].lower()


def test_a_redis_that_does_not_answer_gets_503() -> None:
    with ApiServer(f"redis://127.0.0.1:{free_port()}/0", settings=ApiSettings(dev=True)) as server:
        page = httpx.get(f"{server.url}/ui/runs", timeout=30)
    assert page.status_code == 503 and page.text.startswith("Redis ") and page.headers["retry-after"] == "1"
