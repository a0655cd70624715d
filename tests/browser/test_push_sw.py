"""The demo's service worker (``/sw.js``) in headless Chromium: a push message delivered through the DevTools
protocol (``ServiceWorker.deliverPushMessage``, since no push service is reachable) shows a notification,
and clicking it opens the notification's URL.

What this proves, exactly: headless Chromium shows no notification on a screen, so "shows" is checked
through the registration's ``getNotifications()`` (title, body, tag and URL as the worker built them). A
notification that is not on a screen cannot be clicked either, so the test dispatches the
``notificationclick`` event inside the worker. Such a synthetic click has no user activation, which is
what a real click gives: the worker may not focus or open windows for it, but it may navigate a window it
controls. So for a URL of the inbox's origin the test sees the open inbox page arrive at the URL; for a URL
of another origin it checks that the handler asks ``clients.openWindow`` for it (the browser refuses the
window itself to a synthetic click).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from herald_ops.testing.client import running_stack
from herald_ops.testing.stack import wait_until
from tests.browser.test_inbox import CHROMIUM, CHROMIUM_ARGS
from worker.delivery.senders.webpush import push_payload

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.async_api import CDPSession, Page

    from herald_ops.testing.stack import HeraldProcess, Stack

pytestmark = pytest.mark.timeout(120)

# Registers /sw.js and resolves once it controls the page: activated, and clients.claim() done.
REGISTER = """async () => {
    await navigator.serviceWorker.register("/sw.js");
    if (!navigator.serviceWorker.controller) {
        await new Promise((resolve) =>
            navigator.serviceWorker.addEventListener("controllerchange", resolve, {once: true}));
    }
    return {permission: Notification.permission, scope: (await navigator.serviceWorker.ready).scope};
}"""

SHOWN = """async () => {
    const registration = await navigator.serviceWorker.ready;
    return (await registration.getNotifications()).map((n) => ({title: n.title, body: n.body, tag: n.tag,
                                                                 url: n.data.url}));
}"""

# Dispatches a click on the shown notification inside the worker and records what the handler asks of
# clients.openWindow (still calling it: the browser refuses it without user activation).
CLICK = """async () => {
    const calls = [];
    const openWindow = self.clients.openWindow.bind(self.clients);
    self.clients.openWindow = (url) => {
        calls.push(url);
        return openWindow(url).catch((error) => error.name);
    };
    try {
        const [notification] = await self.registration.getNotifications();
        const event = new NotificationEvent("notificationclick", {notification});
        const handled = [];
        event.waitUntil = (promise) => handled.push(Promise.resolve(promise).catch((error) => error.name));
        self.dispatchEvent(event);
        await Promise.all(handled);
        return {calls, left: (await self.registration.getNotifications()).length};
    } finally {
        self.clients.openWindow = openWindow;
    }
}"""


@pytest.fixture(scope="module")
def herald() -> Iterator[tuple[Stack, HeraldProcess]]:
    with running_stack() as running:
        yield running


def notification(number: int, url: str, *, in_data: bool = False) -> dict[str, Any]:
    """A push payload as herald-delivery builds it for a notification with the click target ``url``, or
    (``in_data``) one without, whose producer put the URL in ``data.url`` as before §10 had ``url``."""
    stored = {
        "id": f"n-{number}",
        "type": "GRADE_RELEASED",
        "category": "assessment",
        "title": f"Your grade is out ({number})",
        "message": "Essay: A",
        "data": {"url": url} if in_data else {},
        "url": None if in_data else url,
        "created_at": "2026-01-01T00:00:00Z",
    }
    payload: dict[str, Any] = orjson.loads(push_payload(stored))
    return payload


class PushEvents:
    """The browser's own record of push events (DevTools "background services"): when the worker's push
    handler finished, and how ("Success", or why not), so the test reads notifications only after it."""

    def __init__(self, cdp: CDPSession) -> None:
        self._cdp = cdp
        self.completed: list[str] = []  # the status of each finished push event, in order
        cdp.on("BackgroundService.backgroundServiceEventReceived", self._on_event)

    def _on_event(self, params: dict[str, Any]) -> None:
        event = params["backgroundServiceEvent"]
        if event["service"] == "pushMessaging" and event["eventName"] == "Push event completed":
            metadata = {item["key"]: item["value"] for item in event["eventMetadata"]}
            self.completed.append(metadata.get("Status", ""))

    async def start(self) -> None:
        service = {"service": "pushMessaging"}
        await self._cdp.send("BackgroundService.startObserving", service)
        await self._cdp.send("BackgroundService.setRecording", {**service, "shouldRecord": True})


async def push(
    cdp: CDPSession, events: PushEvents, page: Page, target: tuple[str, str], payload: dict[str, Any]
) -> None:
    """Deliver ``payload`` to the registration ``target`` (origin, id) as a push message, wait until the
    worker handled it, and check it is shown as the only notification."""
    origin, registration_id = target
    before = len(events.completed)
    await cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": origin, "registrationId": registration_id, "data": orjson.dumps(payload).decode()},
    )
    await wait_until(lambda: len(events.completed) > before, 30, f"push {payload['id']} handled")
    assert events.completed[before] == "Success"
    expected = {
        "title": payload["title"],
        "body": "Essay: A",
        "tag": payload["id"],
        "url": payload["url"] or payload["data"]["url"],
    }
    assert await page.evaluate(SHOWN) == [expected]


async def test_a_push_message_shows_a_notification_and_a_click_opens_its_url(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    from playwright.async_api import async_playwright

    origin = herald[1].url
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            await context.grant_permissions(["notifications"], origin=origin)
            page = await context.new_page()
            cdp = await context.new_cdp_session(page)
            # Pushes go to the worker only once it is activated (the browser says so) and controls the
            # page (a window it may navigate), with the notification permission granted.
            activated: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            def on_versions(event: dict[str, Any]) -> None:
                for version in event["versions"]:
                    ours = version["scriptURL"] == f"{origin}/sw.js"
                    if ours and version["status"] == "activated" and not activated.done():
                        activated.set_result(version["registrationId"])

            cdp.on("ServiceWorker.workerVersionUpdated", on_versions)
            await cdp.send("ServiceWorker.enable")
            events = PushEvents(cdp)
            await events.start()
            await page.goto(f"{origin}/")
            registered = await page.evaluate(REGISTER)
            assert registered == {"permission": "granted", "scope": f"{origin}/"}
            target = (origin, await asyncio.wait_for(activated, 30))
            await wait_until(lambda: bool(context.service_workers), 30, "the worker attached")
            (worker,) = context.service_workers

            # A URL of the inbox's origin: the open inbox page is navigated there.
            inbox_url = f"{origin}/?opened-from=push"
            await push(cdp, events, page, target, notification(1, inbox_url))
            clicked = await worker.evaluate(CLICK)
            assert clicked == {"calls": [], "left": 0}
            await page.wait_for_url(inbox_url, timeout=15_000)

            # Another origin: the inbox stays, a new window is asked for.
            elsewhere = "https://courses.example/essay/1"
            await push(cdp, events, page, target, notification(2, elsewhere, in_data=True))
            clicked = await worker.evaluate(CLICK)
            assert clicked == {"calls": [elsewhere], "left": 0}
            assert page.url == inbox_url
        finally:
            await browser.close()
