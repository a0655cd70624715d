"""Pages of the gateway's origin other than the demo inbox, in headless Chromium: the browser snippet of
docs/clients.md (copied into the README) as printed, the plain JavaScript page (gateway/static/plain.html),
and a bare page with clients/js/herald.js connected that sees a mark read made over herald-api's HTTP API.
Against a real worker + gateway, with the fixtures of ``test_inbox``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from herald_ops.testing.client import doc_snippet, event_body, publish
from herald_ops.testing.stack import fresh_id, mint, wait_until
from tests.browser import test_inbox

if TYPE_CHECKING:
    from herald_ops.testing.stack import HeraldProcess, Stack
    from tests.browser.test_inbox import Tabs

# test_inbox's fixtures, under their names: a real stack, one Chromium, tabs closed after each test.
herald, browser, tabs = test_inbox.herald, test_inbox.browser, test_inbox.tabs


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


async def test_the_plain_javascript_page(herald: tuple[Stack, HeraldProcess], tabs: Tabs) -> None:
    stack, gateway = herald
    user = fresh_id("p")
    page = await tabs.blank()
    await page.goto(f"{gateway.url}/plain.html?user={user}")
    await page.wait_for_selector('#status[data-state="open"]', timeout=15000)
    await publish(stack.amqp_url, event_body(user, title="Plain and simple"))
    await page.wait_for_selector("#list li.unread >> text=Plain and simple")
    await page.click("#list li.unread")
    await page.wait_for_selector("#unread >> text=0")


async def test_a_mark_read_over_http_reaches_the_open_tab(
    herald: tuple[Stack, HeraldProcess], tabs: Tabs
) -> None:
    """A minimal page of the gateway's origin with clients/js/herald.js connected; herald-api marks read."""
    stack, gateway = herald
    api = stack.start_api()
    user = fresh_id("http")
    page = await tabs.blank()
    await page.goto(f"{gateway.url}/healthz")  # any page of the gateway's origin: the socket is same-origin
    await page.evaluate(
        """async ({url, token}) => {
            const { HeraldClient } = await import("/client/herald.js");
            window.reads = [];
            window.client = new HeraldClient(url, { getToken: async () => token });
            client.on("notification:read", (params) => reads.push(params));
            await client.connect();
        }""",
        {"url": gateway.ws_url, "token": mint(user)},
    )
    await publish(stack.amqp_url, event_body(user, title="Read me over HTTP"))
    await wait_until(lambda: page.evaluate("() => client.unreadCount === 1"), 10, "the tab to count 1 unread")
    async with httpx.AsyncClient(base_url=api.url, timeout=15) as http:
        headers = {"Authorization": f"Bearer {mint(user)}"}
        [item] = (await http.get("/api/notifications/realtime", headers=headers)).json()["data"]
        marked = await http.patch(f"/api/notifications/realtime/{item['id']}/read", headers=headers)
    assert marked.json().items() >= {"updated": 1, "unread_count": 0}.items()
    await wait_until(
        lambda: page.evaluate("() => reads.length === 1"), 10, "the tab to see notification:read"
    )
    assert (await page.evaluate("() => reads[0]")).items() >= {"ids": [item["id"]], "unread_count": 0}.items()
    assert await page.evaluate("() => client.unreadCount") == 0
