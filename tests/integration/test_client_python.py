"""The Python client (herald_client/client.py) against a real worker + gateway: the everyday session.

Same scenarios as the JS client's tests (clients/js/test/): first-frame auth, live notifications with the
unread count in step, seen / archive / act and a collapsed item replaced, requests and their errors, tabs
in step, and the documented snippet run as printed. Reconnects, token refresh and the close codes that
stop the client are in test_client_python_connection.py; the scripted-gateway and pure tests in
test_client_python_scripted.py (both import this module's ``herald`` fixture, ``Recorder`` and ``session``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import pytest

from herald_client.client import (
    Event,
    HeraldClient,
    HeraldRequestError,
)
from herald_ops.testing.client import (
    DOC_GATEWAY,
    doc_snippet,
    event_body,
    publish,
    running_stack,
)
from herald_ops.testing.stack import (
    ROOT,
    fresh_id,
    mint,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack


@pytest.fixture(scope="module")
def herald() -> Iterator[tuple[Stack, HeraldProcess]]:
    with running_stack() as running:
        yield running


class Recorder:
    """Collects a client's events through its public async iterator."""

    def __init__(self, client: HeraldClient) -> None:
        self.events: list[Event] = []
        self._task = asyncio.create_task(self._collect(client))

    async def _collect(self, client: HeraldClient) -> None:
        async for event in client.events():
            self.events.append(event)

    def named(self, method: str) -> list[Event]:
        return [event for event in self.events if event.method == method]

    def new_ids(self) -> list[str]:
        return [event.params["id"] for event in self.named("notification:new")]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def session(url: str, user: str, **options: Any) -> AsyncIterator[tuple[HeraldClient, Recorder]]:
    client = HeraldClient(url, lambda: mint(user), **options)
    recorder = Recorder(client)
    await asyncio.sleep(0)  # the recorder subscribes before the first event
    try:
        async with client:
            yield client, recorder
    finally:
        await recorder.stop()


async def test_connects_with_first_frame_auth(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        assert client.state == "open"
        assert client.user_id == user
        assert client.unread_count == 0
        assert await client.ping() == "pong"
        [connected] = recorder.named("connected")
        assert connected.params["user_id"] == user


async def test_live_notification_updates_unread_count(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        body = event_body(user, title="Hello live")
        await publish(stack.amqp_url, body)
        await wait_until(lambda: len(recorder.named("notification:new")) == 1, 10, "the live notification")
        item = recorder.named("notification:new")[0].params
        assert (item["title"], item["type"], item["read_at"]) == ("Hello live", "COURSE_NEW_CONTENT", None)
        assert client.unread_count == 1
        assert [e.params["count"] for e in recorder.named("unread")][-1] == 1

        page = await client.list_notifications(limit=10)
        assert [i["id"] for i in page["items"]] == [item["id"]]
        result = await client.mark_read([item["id"]])
        assert result == {"updated": 1, "unread_count": 0, "unseen_count": 0, "last_seq": 1}
        assert (client.unread_count, client.unseen_count) == (0, 0)
        await wait_until(lambda: recorder.named("notification:read"), 10, "notification:read")

        # Redelivery of the same event id stores nothing twice; whatever is pushed again is dropped by id.
        await publish(stack.amqp_url, body, event_body(user, title="second"))
        await wait_until(lambda: len(recorder.named("notification:new")) == 2, 10, "the second notification")
        assert len(set(recorder.new_ids())) == 2
        assert client.unread_count == 1
        # Pages by number (amendment 26): the second page of one is the older notification.
        second = await client.list_notifications(limit=1, page=2)
        assert [i["id"] for i in second["items"]] == [item["id"]]


async def test_unseen_archive_act_and_a_collapsed_item_replaced(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    actions = [{"id": "open", "label": "Open"}]
    async with session(gateway.ws_url, user) as (client, recorder):
        await publish(stack.amqp_url, *(event_body(user, title=f"n{i}", actions=actions) for i in range(2)))
        await wait_until(lambda: len(recorder.new_ids()) == 2, 10, "two notifications")
        ids = recorder.new_ids()
        assert (client.unread_count, client.unseen_count) == (2, 2)
        assert (await client.mark_seen())["unseen_count"] == 0  # the bell was opened
        assert (client.unread_count, client.unseen_count) == (2, 0)
        await client.archive([ids[0]])
        assert [i["id"] for i in (await client.list_notifications())["items"]] == [ids[1]]
        assert [i["id"] for i in (await client.list_notifications(archived=True))["items"]] == [ids[0]]
        assert len((await client.list_notifications(archived=None))["items"]) == 2
        await client.unarchive([ids[0]])
        acted = await client.act(ids[1], "open")
        assert (acted["acted"], acted["action_id"], client.unread_count) == (True, "open", 1)
        await wait_until(lambda: recorder.named("notification:acted"), 10, "notification:acted")

        # Two events of one collapse key: the second replaces the first item instead of adding one.
        first = event_body(user, title="1 comment", collapse_key="thread")
        await publish(stack.amqp_url, first)
        await wait_until(lambda: len(recorder.new_ids()) == 3, 10, "the collapsible notification")
        await publish(stack.amqp_url, event_body(user, title="2 comments", collapse_key="thread"))
        await wait_until(
            lambda: any(e.replaces for e in recorder.named("notification:new")), 10, "the replacement"
        )
        replacement = next(e.params for e in recorder.named("notification:new") if e.replaces)
        assert (replacement["id"], replacement["title"], replacement["count"]) == (
            recorder.new_ids()[2],
            "2 comments",
            2,
        )
        # Counts are fetched again after a replacement: one unread from before, the collapsed one unseen.
        await wait_until(lambda: (client.unread_count, client.unseen_count) == (2, 1), 10, "the counts")


async def test_requests_and_errors(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        await publish(stack.amqp_url, *(event_body(user, title=f"n{i}") for i in range(3)))
        await wait_until(lambda: len(recorder.new_ids()) == 3, 10, "three notifications")
        ids = recorder.new_ids()
        assert (await client.delete([ids[0]]))["unread_count"] == 2
        assert client.unread_count == 2
        assert (await client.mark_all_read())["unread_count"] == 0
        assert (await client.mark_unread([ids[1]]))["unread_count"] == 1
        assert await client.fetch_unread_count() == 1
        assert (await client.sync(0))["items"][-1]["id"] == ids[2]

        prefs = await client.update_preferences({"types": {"NEW_COMMENT": {"email": True}}})
        assert prefs["types"]["NEW_COMMENT"]["email"] is True
        assert (await client.get_preferences())["types"]["NEW_COMMENT"]["email"] is True
        assert (await client.reset_preferences())["types"]["NEW_COMMENT"]["email"] is False

        with pytest.raises(HeraldRequestError) as invalid:
            await client.mark_read("not-a-list")  # type: ignore[arg-type]
        assert invalid.value.code == -32602
        with pytest.raises(HeraldRequestError) as unknown:
            await client.request("session.open")
        assert unknown.value.code == -32601
        with pytest.raises(HeraldRequestError) as forbidden:
            await client.broadcast("hi", "not an admin")
        assert forbidden.value.code == 4003
        assert client.state == "open"  # errors never cost the connection


async def test_two_tabs_stay_in_step(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (first, _), session(gateway.ws_url, user) as (second, seen):
        await publish(stack.amqp_url, event_body(user))
        await wait_until(
            lambda: first.unread_count == 1 and second.unread_count == 1 and seen.new_ids(),
            10,
            "both counts at 1",
        )
        await first.mark_read([seen.new_ids()[0]])
        await wait_until(
            lambda: second.unread_count == 0 and seen.named("notification:read"), 10, "the second tab at 0"
        )
        assert seen.named("notification:read")[-1].params["ids"] == seen.new_ids()


async def test_the_documented_snippet_works_as_printed(herald: tuple[Stack, HeraldProcess]) -> None:
    """docs/clients.md's Python snippet (copied into the README), with only the gateway address changed."""
    stack, gateway = herald
    user = fresh_id("doc")
    code = doc_snippet("python")
    assert DOC_GATEWAY in code
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code.replace(DOC_GATEWAY, gateway.ws_url),
        cwd=ROOT,
        env={**os.environ, "HERALD_TOKEN": mint(user)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            assert await process.stdout.readline() == b"unread: 0\n"
            await publish(stack.amqp_url, event_body(user, title="Printed snippet"))
            assert await process.stdout.readline() == b"new: Printed snippet\n"
    finally:
        process.kill()
        await process.wait()
