"""The demo inbox's screens in headless Chromium: the dropdown list and the preferences panel.

Against a real worker + gateway, with the fixtures and helpers of ``test_inbox``. Preferences saved in one
tab show in another (muted types, quiet hours with a time zone, reset to defaults); the list loads more on
scroll, deletes an item and marks all read; the keyboard opens and leaves the dropdown with focus back on
the bell; axe-core finds no serious violation on the login, inbox and preferences screens in either theme.
Also takes the README's screenshots, docs/img/inbox.png, inbox-dark.png and preferences.png, where
``test_inbox.screenshot_path`` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from herald_ops.testing.client import event_body, publish
from herald_ops.testing.stack import fresh_id, wait_until
from tests.browser import test_inbox
from tests.browser.test_inbox import (
    AXE,
    Tabs,
    _is,
    _stored,
    badge,
    listed_ids,
    open_inbox,
    screenshot_path,
    seen,
    unread,
)

if TYPE_CHECKING:
    from playwright.async_api import Page

    from herald_ops.testing.stack import HeraldProcess, Stack

# test_inbox's fixtures, under their names: a real stack, one Chromium, tabs closed after each test.
herald, browser, tabs = test_inbox.herald, test_inbox.browser, test_inbox.tabs


async def _titles_include(page: Page, title: str) -> bool:
    return title in [s["title"] for s in await seen(page)]


async def open_preferences(page: Page) -> None:
    await page.click("#prefs-button")
    await page.locator('input[name="types.NEW_COMMENT.in_app"]').wait_for()


async def test_preferences_save_and_follow_another_tab(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = "sam"  # fixed, so the screenshot only changes when the page does
    page = await tabs.inbox(user)
    other = await tabs.inbox(user)  # another browser of the same user
    await open_preferences(page)
    await open_preferences(other)
    toggle = page.locator('input[name="types.NEW_COMMENT.in_app"]')
    mirrored = other.locator('input[name="types.NEW_COMMENT.in_app"]')
    if not await toggle.is_checked():  # a rerun against a reused database: start from the defaults
        await page.click("text=Reset to defaults")
        await wait_until(toggle.is_checked, 10, "the reset")
    assert await toggle.is_checked()
    await toggle.click()
    await page.wait_for_selector(".herald-prefs-status >> text=Saved")
    assert not await toggle.is_checked()
    await wait_until(lambda: _unchecked(mirrored), 10, "the other tab to show the change")
    locked = page.locator('input[name="types.SECURITY_ALERT.email"]')
    assert await locked.is_checked()
    assert await locked.is_disabled()
    await page.set_viewport_size({"width": 1180, "height": 1280})  # the whole grid and quiet hours
    await page.screenshot(path=screenshot_path("preferences.png"), animations="disabled")

    # The muted type and then an unmuted marker: once the marker is shown, the muted one had its chance.
    await publish(
        stack.amqp_url,
        event_body(user, type="NEW_COMMENT", title="Muted comment"),
        event_body(user, type="COURSE_UPDATE", title="Marker"),
    )
    await wait_until(lambda: _titles_include(page, "Marker"), 10, "the marker notification")
    assert [s["title"] for s in await seen(page)] == ["Marker"]

    # Quiet hours from the other tab, with the time-zone picker; this tab follows.
    await other.check('input[name="quiet.enabled"]')
    await other.fill('input[name="quiet.start"]', "21:30")
    await other.select_option('select[name="quiet.timezone"]', "Europe/Berlin")
    await other.click("text=Save quiet hours")
    await wait_until(
        lambda: _value_is(page, 'input[name="quiet.start"]', "21:30"), 10, "quiet hours in the first tab"
    )
    assert await page.locator('select[name="quiet.timezone"]').input_value() == "Europe/Berlin"
    assert await page.is_checked('input[name="quiet.enabled"]')

    # Reset brings the type back, in both tabs.
    await page.click("text=Reset to defaults")
    await wait_until(toggle.is_checked, 10, "the reset to turn NEW_COMMENT back on")
    await wait_until(mirrored.is_checked, 10, "the reset in the other tab")
    assert not await page.is_checked('input[name="quiet.enabled"]')


async def _unchecked(locator: Any) -> bool:
    return not await locator.is_checked()


async def _value_is(page: Page, selector: str, value: str) -> bool:
    return bool(await page.locator(selector).input_value() == value)


SAMPLES = [
    (
        "COURSE_NEW_CONTENT",
        "New lesson available",
        "Lesson 7 “Indexes and query plans” was added to Databases 101",
    ),
    ("GRADE_RELEASED", "Your grade is out", "Assignment 2 of Distributed Systems: 92/100"),
    ("ASSIGNMENT_DEADLINE", "Deadline tomorrow", "Project proposal for Machine Learning is due Friday 23:59"),
    (
        "NEW_REPLY",
        "Maya replied to your comment",
        "“Good point — the quorum queue also needs a delivery limit.”",
    ),
    ("MILESTONE_ACHIEVED", "7-day streak!", "You studied every day this week. Keep going"),
    ("SYSTEM_ANNOUNCEMENT", "Scheduled maintenance", "The platform is read-only on Sunday 02:00–03:00 UTC"),
]


async def test_screenshots_of_the_inbox(herald: tuple[Stack, HeraldProcess], tabs: Tabs) -> None:
    stack = herald[0]
    for user, theme, name in (("jordan", "light", "inbox.png"), ("jordan-dark", "dark", "inbox-dark.png")):
        await publish(
            stack.amqp_url, *(event_body(user, type=t, title=title, message=m) for t, title, m in SAMPLES)
        )
        await wait_until(lambda user=user: _stored(stack, user, len(SAMPLES)), 15, "the samples stored")
        context = await tabs.profile()
        await context.add_init_script(f"localStorage.setItem('herald-demo-theme', '{theme}')")
        page = await tabs.inbox(user, context)
        await open_inbox(page)
        await page.wait_for_function("document.querySelectorAll('.herald-dropdown article').length === 6")
        ids = await listed_ids(page)
        await page.evaluate("id => heraldDemo.client.markRead([id])", ids[-1])
        await page.wait_for_selector(f'.herald-dropdown article[data-id="{ids[-1]}"]:not(.herald-unread)')
        live = event_body(
            user,
            type="INSTRUCTOR_MESSAGE",
            title="Message from Dr. Okafor",
            message="Office hours move to 3 pm",
        )
        await publish(stack.amqp_url, live)
        await page.wait_for_selector(".herald-toast >> text=Message from Dr. Okafor")
        await page.mouse.move(0, 0)
        await page.screenshot(path=screenshot_path(name), animations="disabled")


async def test_infinite_scroll_delete_and_mark_all_read(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("b")
    await publish(stack.amqp_url, *(event_body(user, title=f"item {i:02d}") for i in range(45)))
    await wait_until(lambda: _stored(stack, user, 45), 15, "45 stored notifications")
    page = await tabs.inbox(user)
    assert await badge(page) == 45
    await open_inbox(page)
    # Pages of 20: scrolling to the end of the list loads the next page until everything is there.
    await page.wait_for_function("document.querySelectorAll('.herald-dropdown article').length >= 20")
    while (count := len(await listed_ids(page))) < 45:
        await page.eval_on_selector(".herald-scroller", "s => { s.scrollTop = s.scrollHeight; }")
        await page.wait_for_function(
            f"document.querySelectorAll('.herald-dropdown article').length > {count}"
        )
    assert len(set(await listed_ids(page))) == 45
    await page.wait_for_selector(".herald-foot >> text=That's everything")

    first = page.locator(".herald-dropdown article").first
    doomed = await first.get_attribute("data-id")
    await first.hover()
    await first.locator(".herald-delete").click()
    await page.wait_for_selector(f'.herald-dropdown article[data-id="{doomed}"]', state="detached")
    await wait_until(lambda: _is(unread, page, 44), 10, "the unread count after a delete")

    await page.click(".herald-mark-all")
    await wait_until(lambda: _is(unread, page, 0), 10, "the unread count after mark all read")
    assert await page.locator(".herald-dropdown article.herald-unread").count() == 0
    await page.click('.herald-tab[data-filter="unread"]')
    await page.wait_for_selector(".herald-foot >> text=You're all caught up")


async def test_keyboard_escape_returns_focus_to_the_bell(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    stack = herald[0]
    user = fresh_id("k")
    await publish(stack.amqp_url, event_body(user, title="one"), event_body(user, title="two"))
    await wait_until(lambda: _stored(stack, user, 2), 15, "two stored")
    page = await tabs.inbox(user)
    await page.focus(".herald-bell")
    await page.keyboard.press("Enter")
    await page.wait_for_function("document.activeElement?.getAttribute('role') === 'tab'")
    await page.wait_for_function("document.querySelectorAll('.herald-dropdown article').length === 2")
    await page.keyboard.press("ArrowDown")
    assert await page.evaluate("document.activeElement.textContent.includes('two')")
    await page.keyboard.press("ArrowDown")
    assert await page.evaluate("document.activeElement.textContent.includes('one')")
    await page.keyboard.press("Escape")
    await page.wait_for_selector(".herald-dropdown", state="detached")
    assert await page.evaluate("document.activeElement.classList.contains('herald-bell')")


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = await page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => ({id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}))"""
    )
    return found


async def test_no_serious_accessibility_violations(herald: tuple[Stack, HeraldProcess], tabs: Tabs) -> None:
    stack, gateway = herald
    user = fresh_id("a")
    login = await tabs.blank()
    await login.goto(f"{gateway.url}/")
    await login.wait_for_selector("#user-input")
    problems = {"login": await axe_violations(login)}

    for theme in ("light", "dark"):
        context = await tabs.profile()
        await context.add_init_script(f"localStorage.setItem('herald-demo-theme', '{theme}')")
        page = await tabs.inbox(user, context)
        await publish(stack.amqp_url, event_body(user, title=f"Accessible {theme}"))
        await page.wait_for_selector(f".herald-toast >> text=Accessible {theme}")
        await open_inbox(page)
        await page.wait_for_selector(f".herald-dropdown article >> text=Accessible {theme}")
        problems[f"inbox ({theme})"] = await axe_violations(page)
        await page.keyboard.press("Escape")
        await open_preferences(page)
        problems[f"preferences ({theme})"] = await axe_violations(page)
    assert not any(problems.values()), problems
