"""The demo's service worker (``/sw.js``) in headless Chromium: a push message delivered through the DevTools
protocol (``ServiceWorker.deliverPushMessage``, since no push service is reachable) shows a notification,
and clicking it opens the notification's URL.

What this proves, exactly: headless Chromium shows no notification on a screen, so "shows" is checked
through the registration's ``getNotifications()`` (title, body, tag and URL as the worker built them). A
notification that is not on a screen cannot be clicked either, so the test dispatches the
``notificationclick`` event inside the worker and checks that the handler closes the notification and calls
``clients.openWindow`` with the notification's URL; Chromium refuses to open a window for a synthetic event
(no user activation), so the window itself is not seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import pytest

from herald_ops.testing.client import running_stack
from tests.browser.test_inbox import CHROMIUM, CHROMIUM_ARGS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def herald() -> Iterator[tuple[Stack, HeraldProcess]]:
    with running_stack() as running:
        yield running


async def test_a_push_message_shows_a_notification_and_a_click_opens_its_url(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    from playwright.async_api import async_playwright

    gateway = herald[1]
    origin = gateway.url
    target = f"{origin}/?opened-from=push"
    payload = {
        "id": "n-1",
        "type": "GRADE_RELEASED",
        "category": "assessment",
        "title": "Your grade is out",
        "message": "Essay: A",
        "data": {"url": target},
        "created_at": "2026-01-01T00:00:00Z",
    }
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            await context.grant_permissions(["notifications"], origin=origin)
            page = await context.new_page()
            cdp = await context.new_cdp_session(page)
            registrations: list[dict[str, str]] = []
            cdp.on(
                "ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(e["registrations"])
            )
            await cdp.send("ServiceWorker.enable")
            await page.goto(f"{origin}/")
            scope = await page.evaluate(
                """async () => {
                    const registration = await navigator.serviceWorker.register("/sw.js");
                    await navigator.serviceWorker.ready;
                    return registration.scope;
                }"""
            )
            assert scope == f"{origin}/"
            (registration_id,) = {r["registrationId"] for r in registrations if r["scopeURL"] == scope}

            await cdp.send(
                "ServiceWorker.deliverPushMessage",
                {"origin": origin, "registrationId": registration_id, "data": orjson.dumps(payload).decode()},
            )
            shown = await page.evaluate(
                """async () => {
                    const registration = await navigator.serviceWorker.ready;
                    for (let i = 0; i < 100; i++) {
                        const found = await registration.getNotifications();
                        if (found.length) return found.map((n) => ({title: n.title, body: n.body, tag: n.tag,
                                                                    url: n.data.url}));
                        await new Promise((resolve) => setTimeout(resolve, 100));
                    }
                    return [];
                }"""
            )
            assert shown == [{"title": "Your grade is out", "body": "Essay: A", "tag": "n-1", "url": target}]

            (worker,) = context.service_workers
            clicked = await worker.evaluate(
                """async () => {
                    // The browser refuses windows to a synthetic click (no user activation): record the
                    // handler's call, then let the real openWindow run and report how it ended.
                    const calls = [];
                    const openWindow = self.clients.openWindow.bind(self.clients);
                    self.clients.openWindow = (url) => {
                        calls.push(url);
                        return openWindow(url).catch((error) => error.name);
                    };
                    const [notification] = await self.registration.getNotifications();
                    self.dispatchEvent(new NotificationEvent("notificationclick", {notification}));
                    for (let i = 0; i < 100 && !calls.length; i++) {
                        await new Promise((resolve) => setTimeout(resolve, 50));
                    }
                    return {calls, left: (await self.registration.getNotifications()).length};
                }"""
            )
            assert clicked == {"calls": [target], "left": 0}
        finally:
            await browser.close()
