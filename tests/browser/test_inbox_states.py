"""The demo inbox's states of PROTOCOL §10 in headless Chromium: actions, archive, unseen, collapse keys.

Against a real worker + gateway, with the fixtures and helpers of ``test_inbox`` (same browser, same way of
opening signed-in tabs). Two tabs of one user are two browser profiles here (two sockets), so every change
made in one tab has to come back from the server to show in the other.

- an action button clicked in the dropdown reaches ``herald.outcomes`` (a consumer bound to it checks the
  ids), and the item shows read with that action chosen in both tabs; an action with a URL is followed;
- archive moves an item from the inbox to the Archived tab in both tabs, unarchive brings it back;
- the bell's badge counts unseen; opening the dropdown marks everything seen, in the other tab too,
  and the list still shows the items unread;
- one collapse key sent three times is one item with the latest title and a count of 3, live and on load.

Also takes docs/img/inbox-states.png (an item with actions and a collapsed item) the same way
``test_inbox`` takes its screenshots.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import orjson

from herald_ops.testing.client import event_body, publish
from herald_ops.testing.requests import next_message
from herald_ops.testing.stack import ROOT, fresh_id, wait_until
from shared.topology import Topology
from tests.browser import test_inbox
from tests.browser.test_inbox import Tabs, badge, listed_ids, open_inbox, screenshot_path, unread

if TYPE_CHECKING:
    from playwright.async_api import Page

    from herald_ops.testing.stack import HeraldProcess, Stack

ITEMS = ".herald-dropdown article.herald-item"

# test_inbox's fixtures, under their names: a real stack, one Chromium, tabs closed after each test.
herald, browser, tabs = test_inbox.herald, test_inbox.browser, test_inbox.tabs


def herald_send(stack: Stack, user: str, *options: str) -> None:
    """``herald send --user USER OPTIONS…`` as a person would type it, against this stack's broker."""
    argv = [sys.executable, "-m", "herald_ops.cli", "send", "--user", user, *options]
    run = subprocess.run(argv, env=stack.env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


async def stored(stack: Stack, user: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, title, count, read_at, seen_at, archived_at, action_id"
            " FROM notifications WHERE user_id = $1 ORDER BY seq",
            user,
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


async def _stored_count(stack: Stack, user: str, count: int) -> bool:
    return len(await stored(stack, user)) == count


async def _is(probe: Any, page: Page, value: int) -> bool:
    return bool(await probe(page) == value)


def item(page: Page, notification_id: str) -> Any:
    return page.locator(f'{ITEMS}[data-id="{notification_id}"]')


async def show_tab(page: Page, name: str) -> None:
    await open_inbox(page)
    tab = page.locator(f'.herald-tab[data-filter="{name}"]')
    await tab.click()
    await page.wait_for_selector(f'.herald-tab[data-filter="{name}"][aria-selected="true"]')


async def test_an_action_click_reaches_herald_outcomes_and_both_tabs(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack, gateway = herald
    user = fresh_id("act")
    acting = await tabs.inbox(user)
    watching = await tabs.inbox(user)  # another browser of the same user: its own socket

    connection = await aio_pika.connect(stack.amqp_url)
    async with connection:
        channel = await connection.channel()
        outcomes = await channel.declare_queue(exclusive=True)
        await outcomes.bind(Topology().outcomes_exchange, routing_key="INSTRUCTOR_MESSAGE")

        target = f"{gateway.url}/healthz?from=herald-action"
        await asyncio.to_thread(
            herald_send,
            stack,
            user,
            *("--type", "INSTRUCTOR_MESSAGE", "--title", "Join the study group?"),
            *("--message", "Thursdays at 6 pm", "--data", '{"group": "g-7"}'),
            *("--url", f"{gateway.url}/healthz?from=herald-item"),
            *("--action", "accept=Accept", "--action", f"details=Details={target}"),
        )
        for page in (acting, watching):
            await wait_until(lambda page=page: _is(unread, page, 1), 10, "the notification in both tabs")
        [row] = await stored(stack, user)
        for page in (acting, watching):
            await open_inbox(page)
            await item(page, row["id"]).locator("button", has_text="Accept").wait_for()

        await item(acting, row["id"]).locator("button", has_text="Accept").click()
        message = await next_message(outcomes)
        assert message.routing_key == "INSTRUCTOR_MESSAGE"
        outcome = orjson.loads(message.body)
        [row] = await stored(stack, user)
        assert outcome == {
            "notification_id": row["id"],
            "user_id": user,
            "type": "INSTRUCTOR_MESSAGE",
            "action_id": "accept",
            "acted_at": outcome["acted_at"],
            "data": {"group": "g-7"},
        }
        assert row["action_id"] == "accept"
        assert row["read_at"] is not None
        assert outcome["acted_at"]

        # Read, with Accept chosen, in the tab that clicked and in the other one.
        for page in (acting, watching):
            chosen = item(page, row["id"]).locator('button.herald-chosen[aria-pressed="true"]')
            await chosen.wait_for()
            assert await chosen.inner_text() == "Accept"
            await page.wait_for_selector(f'{ITEMS}[data-id="{row["id"]}"]:not(.herald-unread)')
            await wait_until(lambda page=page: _is(unread, page, 0), 10, "the unread count to clear")

        # An action with a URL: its outcome is published and the tab follows the URL.
        await asyncio.to_thread(
            herald_send,
            stack,
            user,
            *("--type", "INSTRUCTOR_MESSAGE", "--title", "Office hours moved"),
            *("--action", "ack=Got it", "--action", f"details=Details={target}"),
        )
        await wait_until(lambda: _stored_count(stack, user, 2), 10, "the second notification stored")
        second = (await stored(stack, user))[-1]
        button = item(acting, second["id"]).locator("button", has_text="Details")
        await button.wait_for()
        await button.click()
        await acting.wait_for_url(target)
        message = await next_message(outcomes)
        outcome = orjson.loads(message.body)
        assert (outcome["notification_id"], outcome["user_id"], outcome["action_id"]) == (
            second["id"],
            user,
            "details",
        )
        chosen = item(watching, second["id"]).locator('button.herald-chosen[aria-pressed="true"]')
        await chosen.wait_for()
        assert await chosen.inner_text() == "Details"


async def test_archive_moves_an_item_to_the_archived_tab_in_both_tabs_and_back(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("arc")
    await publish(stack.amqp_url, event_body(user, title="Keep me"), event_body(user, title="Put me away"))
    await wait_until(lambda: _stored_count(stack, user, 2), 15, "two stored")
    rows = await stored(stack, user)
    keep, doomed = rows[0]["id"], rows[1]["id"]
    first = await tabs.inbox(user)
    other = await tabs.inbox(user)  # another browser of the same user
    await open_inbox(first)
    await show_tab(other, "archived")
    await other.wait_for_selector(".herald-foot")
    assert await listed_ids(other) == []
    await first.wait_for_function(f"document.querySelectorAll('{ITEMS}').length === 2")

    archived = item(first, doomed)
    await archived.hover()
    await archived.locator(".herald-archive").click()
    await archived.wait_for(state="detached")
    assert await listed_ids(first) == [keep]
    await item(other, doomed).wait_for()  # the other tab's Archived tab gains it, live
    assert await listed_ids(other) == [doomed]
    await wait_until(lambda: _archived(stack, doomed, True), 10, "archived_at set")
    # An archived item still counts as unread (PROTOCOL §10).
    for page in (first, other):
        await wait_until(lambda page=page: _is(unread, page, 2), 10, "unread to stay at 2")

    await show_tab(first, "archived")
    await item(first, doomed).wait_for()
    assert await listed_ids(first) == [doomed]
    await show_tab(other, "all")
    # Until the inbox's page arrives the Archived page is still on screen, with one item too: wait for
    # the inbox's own item, not for a length.
    await wait_until(lambda: _lists(other, [keep]), 10, "the other tab's inbox to list only the kept item")

    # Unarchive in the first tab: it leaves Archived there and is back in the other tab's inbox.
    back = item(first, doomed)
    await back.hover()
    await back.locator(".herald-archive").click()
    await back.wait_for(state="detached")
    await item(other, doomed).wait_for()
    assert sorted(await listed_ids(other)) == sorted([keep, doomed])
    await wait_until(lambda: _archived(stack, doomed, False), 10, "archived_at cleared")
    await show_tab(first, "all")
    await first.wait_for_function(f"document.querySelectorAll('{ITEMS}').length === 2")
    assert sorted(await listed_ids(first)) == sorted([keep, doomed])


async def _lists(page: Page, ids: list[str]) -> bool:
    return await listed_ids(page) == ids


async def _archived(stack: Stack, notification_id: str, archived: bool) -> bool:
    row = next(r for r in await stored_by_id(stack, notification_id))
    return (row["archived_at"] is not None) is archived


async def stored_by_id(stack: Stack, notification_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT archived_at FROM notifications WHERE id::text = $1", notification_id)
    finally:
        await conn.close()
    return [dict(row) for row in rows]


async def test_opening_the_dropdown_clears_the_unseen_badge_in_every_tab_not_unread(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("seen")
    first = await tabs.inbox(user)
    other = await tabs.inbox(user)  # another browser of the same user
    await publish(stack.amqp_url, event_body(user, title="Unseen one"), event_body(user, title="Unseen two"))
    for page in (first, other):
        await wait_until(lambda page=page: _is(badge, page, 2), 10, "the badge at 2 unseen")
        assert await page.get_attribute(".herald-bell", "data-unseen") == "2"
        assert await unread(page) == 2

    await open_inbox(first)  # opening it marks everything seen
    for page in (first, other):
        await wait_until(lambda page=page: _is(badge, page, 0), 10, "the badge to clear")
        await page.wait_for_selector('.herald-bell[data-unseen="0"]')
        assert await unread(page) == 2  # seen is not read
    await first.wait_for_function(f"document.querySelectorAll('{ITEMS}.herald-unread').length === 2")
    await open_inbox(other)
    await other.wait_for_function(f"document.querySelectorAll('{ITEMS}.herald-unread').length === 2")
    rows = await stored(stack, user)
    assert all(r["seen_at"] is not None and r["read_at"] is None for r in rows), rows

    # Something new while every dropdown is closed shows on the badge again, and only that (an open
    # dropdown in any tab marks it seen at once: seen is the user's, not the tab's).
    for page in (first, other):
        await page.keyboard.press("Escape")
        await page.wait_for_selector(".herald-dropdown", state="detached")
    await publish(stack.amqp_url, event_body(user, title="Unseen three"))
    await wait_until(lambda: _is(badge, first, 1), 10, "the badge at 1 for the new one")
    assert await unread(first) == 3


async def test_one_collapse_key_sent_three_times_is_one_item_with_the_latest_title(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("col")
    live = await tabs.inbox(user)
    await open_inbox(live)
    for i in (1, 2, 3):
        await publish(
            stack.amqp_url,
            event_body(user, type="NEW_REPLY", title=f"{i} new replies", collapse_key="thread-9"),
        )
        await wait_until(lambda i=i: _collapsed(stack, user, i), 10, f"the row at count {i}")
        await live.wait_for_selector(f"{ITEMS} >> text={i} new replies")
        assert len(await listed_ids(live)) == 1
    [row] = await stored(stack, user)
    assert await listed_ids(live) == [row["id"]]
    assert (await item(live, row["id"]).locator(".herald-count").inner_text()).strip() == "×3"
    assert await unread(live) == 1

    loaded = await tabs.inbox(user)  # a tab that lists it from the server
    await open_inbox(loaded)
    await item(loaded, row["id"]).locator(".herald-count").wait_for()
    assert await listed_ids(loaded) == [row["id"]]
    assert "3 new replies" in await item(loaded, row["id"]).inner_text()
    assert (await item(loaded, row["id"]).locator(".herald-count").inner_text()).strip() == "×3"
    assert await unread(loaded) == 1


async def _collapsed(stack: Stack, user: str, count: int) -> bool:
    rows = await stored(stack, user)
    return len(rows) == 1 and rows[0]["count"] == count


async def test_screenshot_of_actions_archive_and_a_collapsed_item(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = "riley"  # fixed, so the screenshot only changes when the page does
    replies = [
        event_body(user, type="NEW_REPLY", title=title, message=message, collapse_key="thread-lesson-7")
        for title, message in (
            ("Maya replied in “Lesson 7”", "“Indexes help here.”"),
            ("2 new replies in “Lesson 7”", "Maya and Theo replied"),
            ("3 new replies in “Lesson 7”", "Maya, Theo and Ines replied"),
        )
    ]
    invitation = event_body(
        user,
        type="INSTRUCTOR_MESSAGE",
        title="Join the study group?",
        message="Dr. Okafor invited you to Thursday's Databases study group",
        actions=[{"id": "accept", "label": "Accept"}, {"id": "decline", "label": "Decline"}],
    )
    grade = event_body(user, type="GRADE_RELEASED", title="Your grade is out", message="Assignment 2: 92/100")
    await publish(stack.amqp_url, grade, *replies, invitation)
    await wait_until(lambda: _stored_count(stack, user, 3), 15, "three stored notifications")
    await wait_until(lambda: _collapsed_in(stack, user, 3), 15, "the replies collapsed into one")
    page = await tabs.inbox(user)
    await open_inbox(page)
    await page.wait_for_function(f"document.querySelectorAll('{ITEMS}').length === 3")
    await page.wait_for_selector(f"{ITEMS} .herald-count")
    await page.wait_for_selector(f"{ITEMS} .herald-item-cta >> text=Accept")
    await page.mouse.move(0, 0)
    await page.screenshot(path=screenshot_path("inbox-states.png"), animations="disabled")


async def _collapsed_in(stack: Stack, user: str, count: int) -> bool:
    return any(row["count"] == count for row in await stored(stack, user))
