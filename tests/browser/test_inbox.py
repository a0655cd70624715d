"""The demo inbox (gateway/static/) in headless Chromium against a real worker + gateway.

Driven by Playwright for Python with Debian's ``chromium`` (Playwright's own browser download is not
used). Without chromium or playwright these tests fail with the reason: ``make test`` runs
``.ci/install-test-deps``, which installs both.

Also takes the README's screenshots, docs/img/inbox.png and docs/img/preferences.png: they are written
there when missing or when ``HERALD_UPDATE_SCREENSHOTS=1`` (so a test run does not dirty the checkout with
pixel noise), else to the test log directory.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from herald_ops.testing.client import doc_snippet, event_body, publish, running_stack
from herald_ops.testing.stack import ROOT, fresh_id, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from playwright.async_api import Browser, Page

    from herald_ops.testing.stack import HeraldProcess, Stack

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMG = ROOT / "docs" / "img"
LOG_DIR = Path(os.environ.get("HERALD_TEST_LOGS", "/tmp/herald-test-logs"))


def screenshot_path(name: str) -> str:
    """Where the screenshot ``name`` goes: docs/img when missing or asked for, else the log directory."""
    target = DOCS_IMG / name
    if target.exists() and os.environ.get("HERALD_UPDATE_SCREENSHOTS") != "1":
        target = LOG_DIR / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return str(target)


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (run .ci/install-test-deps)"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"chromium is not installed at {CHROMIUM} (run .ci/install-test-deps)"
    return None


MISSING = _missing()
if MISSING:
    # A skip is not a pass: a machine without the browser fails here, loudly.
    raise RuntimeError(f"the browser tests cannot run: {MISSING}")


@pytest.fixture(scope="module")
def herald() -> Iterator[tuple[Stack, HeraldProcess]]:
    with running_stack() as running:
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Tabs:
    """The pages one test opens; the ``tabs`` fixture closes them all when the test ends."""

    def __init__(self, browser: Browser, gateway: HeraldProcess) -> None:
        self._browser = browser
        self._gateway = gateway
        self.opened: list[Page] = []

    async def blank(self) -> Page:
        page = await self._browser.new_page(viewport={"width": 1180, "height": 760})
        self.opened.append(page)
        return page

    async def inbox(self, user: str) -> Page:
        """A tab signed in as ``user``, connected, recording every notification:new with its arrival time."""
        page = await self.blank()
        await page.goto(f"{self._gateway.url}/?user={user}")
        await page.wait_for_selector('#status[data-state="open"]', timeout=15000)
        await page.evaluate(
            """() => {
                window.seen = [];
                heraldDemo.client.on("notification:new", (n, meta) =>
                    seen.push({id: n.id, title: n.title, replayed: meta.replayed, at: Date.now()}));
            }"""
        )
        return page


@pytest.fixture
async def tabs(herald: tuple[Stack, HeraldProcess], browser: Browser) -> AsyncIterator[Tabs]:
    opened = Tabs(browser, herald[1])
    try:
        yield opened
    finally:
        for page in opened.opened:
            await page.close()


async def badge(page: Page) -> int:
    """The unread badge as a number (0 when hidden)."""
    text: str | None = await page.evaluate(
        "() => { const b = document.getElementById('badge'); return b.hidden ? null : b.textContent; }"
    )
    return int(text) if text else 0


async def seen(page: Page) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await page.evaluate("() => window.seen")
    return result


async def listed_ids(page: Page) -> list[str]:
    ids: list[str] = await page.eval_on_selector_all("#list li.item", "items => items.map(i => i.dataset.id)")
    return ids


async def test_published_notification_appears_within_a_second(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("b")
    page = await tabs.inbox(user)
    assert await badge(page) == 0
    started = time.time() * 1000
    await publish(stack.amqp_url, event_body(user, title="Quiz 3 is open"))
    await wait_until(lambda: badge(page), 10, "the badge to show 1")
    assert await badge(page) == 1
    [arrival] = await seen(page)
    latency_ms = arrival["at"] - started
    print(f"publish → page latency: {latency_ms:.0f} ms")
    assert latency_ms < 1000, f"the notification took {latency_ms:.0f} ms to reach the page"
    await page.wait_for_selector(".toast >> text=Quiz 3 is open")
    await page.click("#bell")
    await page.wait_for_selector("#list li.item.unread >> text=Quiz 3 is open")


async def test_mark_read_in_one_tab_updates_the_other(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("b")
    first = await tabs.inbox(user)
    second = await tabs.inbox(user)
    await publish(stack.amqp_url, event_body(user, title="Grade released"))
    for page in (first, second):
        await wait_until(lambda page=page: badge(page), 10, "both badges at 1")
    await first.click("#bell")
    await first.click("#list li.item.unread")  # opening an item marks it read
    await wait_until(lambda: _is_zero(second), 10, "the second tab's badge to clear")
    await wait_until(lambda: _is_zero(first), 10, "the first tab's badge to clear")
    await second.click("#bell")
    await second.wait_for_selector("#list li.item:not(.unread) >> text=Grade released")


async def _is_zero(page: Page) -> bool:
    return await badge(page) == 0


async def test_muting_a_type_in_preferences_stops_it(herald: tuple[Stack, HeraldProcess], tabs: Tabs) -> None:
    stack = herald[0]
    user = "sam"  # fixed, so the screenshot only changes when the page does
    page = await tabs.inbox(user)
    await page.click("#prefs-button")
    toggle = page.locator('input[name="types.NEW_COMMENT.in_app"]')
    await toggle.wait_for()
    assert await toggle.is_checked()
    await toggle.click()
    await page.wait_for_selector("#prefs-updated >> text=Saved")
    assert not await toggle.is_checked()
    await page.set_viewport_size({"width": 1180, "height": 1330})  # the whole grid and quiet hours
    await page.evaluate("document.querySelector('.drawer-body').scrollTop = 0")
    await page.screenshot(path=screenshot_path("preferences.png"), animations="disabled")

    # The muted type and then an unmuted marker: once the marker is shown, the muted one had its chance.
    await publish(
        stack.amqp_url,
        event_body(user, type="NEW_COMMENT", title="Muted comment"),
        event_body(user, type="COURSE_UPDATE", title="Marker"),
    )
    await wait_until(lambda: _titles_include(page, "Marker"), 10, "the marker notification")
    assert [s["title"] for s in await seen(page)] == ["Marker"]
    assert await badge(page) == 1

    # Quiet hours round-trip through the server.
    await page.check("#quiet-on")
    await page.fill("#quiet-start", "21:30")
    await page.fill("#quiet-tz", "Europe/Berlin")
    await page.click("#quiet-save")
    await page.wait_for_function(
        "heraldDemo.preferences.quiet_hours?.start === '21:30'"
        " && heraldDemo.preferences.quiet_hours.timezone === 'Europe/Berlin'"
    )

    # Reset brings the type back.
    await page.click("#prefs-reset")
    await wait_until(toggle.is_checked, 10, "the reset to turn NEW_COMMENT back on")
    assert not await page.is_checked("#quiet-on")


async def _titles_include(page: Page, title: str) -> bool:
    return title in [s["title"] for s in await seen(page)]


async def test_screenshot_of_the_inbox(herald: tuple[Stack, HeraldProcess], tabs: Tabs) -> None:
    stack = herald[0]
    user = "jordan"  # fixed, so the screenshot only changes when the page does
    samples = [
        (
            "COURSE_NEW_CONTENT",
            "New lesson available",
            "Lesson 7 “Indexes and query plans” was added to Databases 101",
        ),
        ("GRADE_RELEASED", "Your grade is out", "Assignment 2 of Distributed Systems: 92/100"),
        (
            "ASSIGNMENT_DEADLINE",
            "Deadline tomorrow",
            "Project proposal for Machine Learning is due Friday 23:59",
        ),
        (
            "NEW_REPLY",
            "Maya replied to your comment",
            "“Good point — the quorum queue also needs a delivery limit.”",
        ),
        ("MILESTONE_ACHIEVED", "7-day streak!", "You studied every day this week. Keep going"),
        (
            "SYSTEM_ANNOUNCEMENT",
            "Scheduled maintenance",
            "The platform is read-only on Sunday 02:00–03:00 UTC",
        ),
    ]
    await publish(
        stack.amqp_url, *(event_body(user, type=t, title=title, message=m) for t, title, m in samples)
    )
    page = await tabs.inbox(user)
    await page.click("#bell")
    await page.wait_for_function("document.querySelectorAll('#list li.item').length === 6")
    ids = await listed_ids(page)
    await page.evaluate("id => heraldDemo.client.markRead([id])", ids[-1])
    await page.wait_for_selector(f'#list li.item[data-id="{ids[-1]}"]:not(.unread)')
    live = event_body(
        user,
        type="INSTRUCTOR_MESSAGE",
        title="Message from Dr. Okafor",
        message="Office hours move to 3 pm",
    )
    await publish(stack.amqp_url, live)
    await page.wait_for_selector(".toast >> text=Message from Dr. Okafor")
    await page.screenshot(path=screenshot_path("inbox.png"), animations="disabled")


async def test_gateway_restart_delivers_missed_notifications_once(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack, gateway = herald
    user = fresh_id("b")
    page = await tabs.inbox(user)
    try:
        await publish(stack.amqp_url, event_body(user, title="before the restart"))
        await wait_until(lambda: badge(page), 10, "the first notification")

        gateway.kill()
        await page.wait_for_selector('#status[data-state="reconnecting"]', timeout=10000)
        await publish(stack.amqp_url, *(event_body(user, title=f"missed {i}") for i in range(3)))
        await wait_until(lambda: _stored(stack, user, 4), 10, "the worker to store the missed ones")
        await asyncio.to_thread(gateway.launch)  # same port

        await page.wait_for_selector('#status[data-state="open"]', timeout=20000)
        await wait_until(lambda: _badge_is(page, 4), 15, "the badge to reach 4")
        arrivals = await seen(page)
        assert len(arrivals) == 4
        assert len({a["id"] for a in arrivals}) == 4
        assert sorted(a["title"] for a in arrivals if a["replayed"]) == ["missed 0", "missed 1", "missed 2"]
        await page.click("#bell")
        await page.wait_for_function("document.querySelectorAll('#list li.item').length === 4")
        assert len(set(await listed_ids(page))) == 4
    finally:
        if gateway.popen is not None and gateway.popen.poll() is not None:
            await asyncio.to_thread(gateway.launch)


async def _badge_is(page: Page, count: int) -> bool:
    return await badge(page) == count


async def _stored(stack: Stack, user: str, count: int) -> bool:
    conn = await asyncpg.connect(stack.database_url)
    try:
        stored: int = await conn.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", user)
    finally:
        await conn.close()
    return stored == count


async def test_the_documented_snippet_works_as_printed(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    """docs/clients.md's browser snippet (copied into the README) on a page of the gateway's origin."""
    stack, gateway = herald
    page = await tabs.blank()
    logs: list[str] = []
    page.on("console", lambda message: logs.append(message.text))
    await page.goto(f"{gateway.url}/healthz")  # any page of the gateway's origin
    await page.set_content(doc_snippet("browser"))
    await wait_until(lambda: any(line.startswith("latest:") for line in logs), 15, "the snippet's list()")
    await publish(stack.amqp_url, event_body("alice", title="From the README"))
    await wait_until(lambda: "new: From the README - Lesson 7 was added to Databases 101" in logs, 10, "new")
    assert (await page.title()).startswith("(")  # the unread count is in the title


async def test_infinite_scroll_delete_and_mark_all_read(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("b")
    await publish(stack.amqp_url, *(event_body(user, title=f"item {i:02d}") for i in range(45)))
    await wait_until(lambda: _stored(stack, user, 45), 15, "45 stored notifications")
    page = await tabs.inbox(user)
    assert await badge(page) == 45
    await page.click("#bell")
    # Pages of 20: scrolling to the end of the list loads the next page until everything is there.
    while (count := len(await listed_ids(page))) < 45:
        await page.eval_on_selector("#scroller", "s => { s.scrollTop = s.scrollHeight; }")
        await page.wait_for_function(f"document.querySelectorAll('#list li.item').length > {count}")
    assert len(set(await listed_ids(page))) == 45
    await page.wait_for_selector("#list-foot >> text=That's everything")

    first = page.locator("#list li.item").first
    doomed = await first.get_attribute("data-id")
    await first.hover()
    await first.locator(".item-action.delete").click()
    await page.wait_for_selector(f'#list li.item[data-id="{doomed}"]', state="detached")
    await wait_until(lambda: _badge_is(page, 44), 10, "the badge after a delete")

    await page.click("#mark-all")
    await wait_until(lambda: _badge_is(page, 0), 10, "the badge after mark all read")
    assert await page.locator("#list li.item.unread").count() == 0
    await page.click(".tab[data-filter=unread]")
    await page.wait_for_selector("#list-foot >> text=You're all caught up")
