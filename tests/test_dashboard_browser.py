"""The dashboard in a real browser (Debian's Chromium via Playwright), against the real API and workers.

One Chromium, one dev-mode API and one worker (tests/apps/dashboard.py) serve the whole module; each
test makes its own runs and finds them by id, so the tests do not depend on each other's order.
The login test starts a second API, in production mode with a dashboard token, on the same Redis;
the last test runs scripts/screenshots end to end (its own Redis, worker, API and Chromium).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, Locator, Page, expect
from redis.asyncio import Redis

import stepq
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.connection import connect
from stepq.runtime.queries import get_run
from tests.browser import DashboardStack, chromium, dashboard_stack, dev_settings, find_chromium
from tests.helpers import REDIS_URL, ROOT, run_ids_for_event, runs_of, start_run, wait_for_run
from tests.http_fixtures import clean_environ

pytestmark = pytest.mark.timeout(120)

TOKEN = "browser-test-dashboard-token-0123456789"
#: How long a page may take to show what a test waits for (live updates poll every few seconds).
UI_WAIT_MS = 10_000
expect.set_options(timeout=UI_WAIT_MS)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def stack(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardStack]:
    # Needs the browser first: without one the tests skip before starting processes for nothing.
    with dashboard_stack(tmp_path_factory.mktemp("dashboard"), dev_settings()) as s:
        yield s


@pytest.fixture(scope="module")
async def db(stack: DashboardStack) -> AsyncIterator[Redis]:
    """The test database (flushed once, when the stack started)."""
    client = connect(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def client(stack: DashboardStack) -> AsyncIterator[stepq.Client]:
    sender = stepq.Client("browser-test-sender", redis_url=REDIS_URL)
    yield sender
    await sender.aclose()


@pytest.fixture
def dialogs() -> list[str]:
    """The dialogs (alert, confirm, prompt) the test's page opened: ``"<type>: <message>"``."""
    return []


@pytest.fixture
async def page(browser: Browser, dialogs: list[str]) -> AsyncIterator[Page]:
    """A fresh page in its own context (no cookies from another test). Dialogs are recorded in
    ``dialogs`` and accepted (a confirm() before an action goes ahead)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_WAIT_MS)
    new = await context.new_page()

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.accept()

    new.on("dialog", on_dialog)
    yield new
    await context.close()


def row(page: Page, run_id: str) -> Locator:
    return page.locator(f'tr[data-run-id="{run_id}"]')


async def run_page(page: Page, stack: DashboardStack, run_id: str) -> None:
    await page.goto(f"{stack.ui}/runs/{run_id}")
    await expect(page.locator("#run-status")).to_be_visible()


async def filter_runs(page: Page, *, function: str = "", status: str = "") -> None:
    """Fill the runs list's filter form as a person does, and apply it."""
    form = page.locator("form.filters")
    await form.locator('input[name="function"]').fill(function)
    await form.locator('select[name="status"]').select_option(status)
    await form.get_by_role("button", name="Filter").click()


async def test_runs_list_filter_and_timeline(
    page: Page, stack: DashboardStack, db: Redis, client: stepq.Client
) -> None:
    flaky = await start_run(client, db, "flaky", "dash/flaky", {})
    declined = await start_run(client, db, "declined", "dash/declined", {})
    for run_id in (flaky, declined):
        await wait_for_run(db, run_id)

    # The list: both runs, each with its status.
    await page.goto(f"{stack.ui}/runs")
    await expect(row(page, flaky)).to_contain_text("completed")
    await expect(row(page, declined)).to_contain_text("failed")

    # Filter by function, then by status: the other run leaves the list, and the URL says so.
    await filter_runs(page, function="flaky")
    await expect(page).to_have_url(re.compile(r"function=flaky"))
    await expect(row(page, declined)).to_have_count(0)
    await expect(row(page, flaky)).to_have_count(1)
    await filter_runs(page, status="failed")
    await expect(row(page, flaky)).to_have_count(0)
    await expect(row(page, declined)).to_have_count(1)
    await expect(page.locator("tr[data-run-id]").filter(has_text="completed")).to_have_count(0)

    # Open the flaky run from the list: its timeline shows the step's two attempts, the first failed.
    await filter_runs(page, function="flaky")
    await row(page, flaky).get_by_role("link").first.click()
    await expect(page).to_have_url(re.compile(re.escape(flaky)))
    await expect(page.locator("#run-status")).to_have_text("completed")
    step = page.locator(".wf-row").filter(has=page.locator(".step-name", has_text="call-upstream"))
    attempts = step.locator("ol.attempts > li")
    await expect(attempts).to_have_count(2)
    await expect(attempts.first).to_contain_text("upstream down on the first attempt")
    await expect(attempts.nth(1)).not_to_contain_text("upstream down")
    await expect(page.locator("#run-output")).to_contain_text("ok on attempt 2")

    # The failed run names its error.
    await run_page(page, stack, declined)
    await expect(page.locator("#run-status")).to_have_text("failed")
    await expect(page.locator("#run-error")).to_contain_text("card declined")


async def test_cancel_a_sleeping_run(page: Page, stack: DashboardStack, db: Redis, client: stepq.Client) -> None:
    napper = await start_run(client, db, "napper", "dash/napper", {})
    await wait_for_run(db, napper, statuses=("sleeping",))

    await run_page(page, stack, napper)
    await expect(page.locator("#run-status")).to_have_text("sleeping")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator("#run-status")).to_have_text("cancelled")
    view = await get_run(db, napper)
    assert view is not None and view.status == "cancelled", view


async def test_replay_and_bulk_replay(page: Page, stack: DashboardStack, db: Redis, client: stepq.Client) -> None:
    originals = [await start_run(client, db, "declined", "dash/declined", {"n": i}) for i in range(3)]
    for run_id in originals:
        await wait_for_run(db, run_id)

    # Replay one failed run from its page: a new run of the same function, linked to the original.
    before = {v.run_id for v in await runs_of(db, "declined")}
    await run_page(page, stack, originals[0])
    await page.get_by_role("button", name="Replay").click()
    replay = await new_run(db, "declined", before)
    await expect(page).to_have_url(re.compile(re.escape(replay)))
    link = page.locator("dl.facts dd a", has_text=originals[0])
    await expect(link).to_have_attribute("href", re.compile(re.escape(originals[0]) + "$"))
    await wait_for_run(db, replay)

    # Bulk replay by filter: the preview counts the failed runs of `declined` (this test's and any
    # other test's), then replaying them starts as many new runs.
    failed = [v.run_id for v in await runs_of(db, "declined") if v.status == "failed"]
    before = {v.run_id for v in await runs_of(db, "declined")}
    await page.goto(f"{stack.ui}/bulk")
    form = page.locator("form.filters")
    await form.locator('select[name="action"]').select_option("replay")
    await form.locator('input[name="function"]').fill("declined")
    await form.locator('select[name="status"]').select_option("failed")
    await form.get_by_role("button", name="Preview").click()
    await expect(page.locator("#bulk-count")).to_have_text(str(len(failed)))
    await page.get_by_role("button", name=re.compile(r"^Confirm: replay")).click()
    deadline = time.monotonic() + 15
    while len(fresh := {v.run_id for v in await runs_of(db, "declined")} - before) < len(failed):
        assert time.monotonic() < deadline, f"bulk replay started {len(fresh)} runs, expected {len(failed)}"
        await asyncio.sleep(0.05)
    assert len(fresh) == len(failed)


async def new_run(db: Redis, function: str, before: set[str], timeout: float = 10.0) -> str:
    """The one run of ``function`` that is not in ``before``, once it exists."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = {v.run_id for v in await runs_of(db, function)} - before
        if fresh:
            assert len(fresh) == 1, f"expected one new run of {function}, got {fresh}"
            return fresh.pop()
        assert time.monotonic() < deadline, f"no new run of {function} within {timeout} s"
        await asyncio.sleep(0.05)


SCRIPT = "<script>alert('event data ran')</script>"
IMG = "<img src=x onerror=\"alert('img ran')\">"


async def test_script_in_event_data_is_inert(
    page: Page, dialogs: list[str], stack: DashboardStack, db: Redis, client: stepq.Client
) -> None:
    [event_id] = await client.send(stepq.Event(name="dash/echo", data={"note": SCRIPT, "img": IMG}))
    [run_id] = await run_ids_for_event(db, "echo", event_id)
    view = await wait_for_run(db, run_id)
    assert view.status == "completed", view

    # The run page: the trigger's payload and the step's output show the markup as text.
    await run_page(page, stack, run_id)
    await expect(page.locator("pre.payload")).to_contain_text(SCRIPT)
    await expect(page.locator("#run-output")).to_contain_text(SCRIPT)
    await no_markup_from_payload(page)
    # The events page: the event's row, its payload unfolded.
    await page.goto(f"{stack.ui}/events")
    event_row = page.locator(f'tr[data-event-id="{event_id}"]')
    await event_row.locator("summary").click()
    await expect(event_row.locator("pre.payload")).to_contain_text(SCRIPT)
    await expect(event_row.locator("pre.payload")).to_contain_text("<img src=x onerror=")
    await expect(event_row.locator(f'a[href$="/runs/{run_id}"]')).to_have_count(1)  # the run it started
    await no_markup_from_payload(page)
    assert dialogs == []


async def no_markup_from_payload(page: Page) -> None:
    """No element came from the payload: the page's Content-Security-Policy would stop an inline
    script anyway, so the DOM (not only the absence of a dialog) shows whether the text was escaped."""
    assert await page.locator("img[src=x]").count() == 0
    injected = "() => [...document.scripts].filter(s => s.text.includes('event data ran')).length"
    assert await page.evaluate(injected) == 0
    await page.wait_for_timeout(100)  # an onerror handler would fire right after the image failed


async def test_login_refused_without_the_token(browser: Browser, stack: DashboardStack) -> None:
    settings = ApiSettings(event_keys=("browser-test-key",), dashboard_token=TOKEN)
    with ApiServer(REDIS_URL, settings=settings) as prod:
        context = await browser.new_context()
        context.set_default_timeout(UI_WAIT_MS)
        page = await context.new_page()
        try:
            # No session: any page sends the browser to the login form, and shows no run.
            await page.goto(f"{prod.url}/ui/runs")
            await expect(page).to_have_url(re.compile(r"/ui/login"))
            await expect(page.locator("tr[data-run-id]")).to_have_count(0)
            # A wrong token is refused, still on the login form.
            await page.locator('input[name="token"]').fill("not-the-token")
            await page.locator('input[name="token"]').press("Enter")
            await expect(page.get_by_role("alert")).to_be_visible()
            await expect(page).to_have_url(re.compile(r"/ui/login"))
            # An action without a session is refused too (no cookie, no CSRF token).
            refused = await context.request.post(f"{prod.url}/ui/runs/nope/cancel", max_redirects=0)
            assert refused.status in (401, 403), refused.status
            # The token opens the runs list.
            await page.locator('input[name="token"]').fill(TOKEN)
            await page.locator('input[name="token"]').press("Enter")
            await expect(page).to_have_url(re.compile(r"/ui/runs"))
            await expect(page.locator("form.filters")).to_be_visible()
        finally:
            await context.close()


def test_screenshot_script(browser: Browser, tmp_path: Path) -> None:
    """``scripts/screenshots`` still works: the example app reaches every state it pictures (else
    the script exits non-zero naming the runs), every page answers 200, and each picture is saved."""
    chromium_path = find_chromium()
    assert chromium_path is not None  # the browser fixture skipped otherwise
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshots.py"), "--out", str(tmp_path), "--chromium", chromium_path],
        cwd=ROOT,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["events.png", "functions.png", "run-failed.png", "run-timeline.png", "runs.png"], shots
    for shot in tmp_path.glob("*.png"):
        header = shot.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(header[16:20], "big") == 1440, shot
