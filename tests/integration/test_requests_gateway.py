"""Client requests through the real gateway: real WebSocket clients, real worker processes.

Every method answers through the gateway, bad params name the field, and a second connection of the user (on
the same or another gateway) receives every event while another user's ids change and reveal nothing.
Notifications are seeded in Postgres (``herald_ops.testing.requests.seed``). Requests while notifications
arrive through the real pipeline (:class:`herald_client.producer.Producer`: recovery after a disconnect,
pagination while new ones arrive) are in ``test_requests_gateway_consistency.py``, which takes this module's
``env``, ``db`` and ``producer`` fixtures.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from herald_client.producer import Producer
from herald_ops.testing.requests import WsClient, seed, unread_truth
from herald_ops.testing.stack import fresh_id, stack_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack

pytestmark = pytest.mark.timeout(120)


@dataclass
class Env:
    stack: Stack
    gateway: HeraldProcess

    async def connect(self, user: str, *, admin: bool = False) -> tuple[WsClient, dict[str, Any]]:
        """A client of ``user`` and the params of its ``connected`` frame."""
        client = await WsClient.connect(self.gateway.ws_url, user, admin=admin)
        return client, await client.next_event("connected")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """A stack of its own: one worker, one gateway."""
    with stack_context() as stack:
        stack.start_worker()
        yield Env(stack, stack.start_gateway())


@pytest.fixture
async def db(env: Env) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(env.stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def producer(env: Env) -> AsyncIterator[Producer]:
    async with Producer(env.stack.amqp_url) as publishing:
        yield publishing


@contextlib.asynccontextmanager
async def clients(env: Env, *users: str) -> AsyncIterator[list[WsClient]]:
    """Connected clients (``connected`` already received), closed on exit."""
    opened = [(await env.connect(user))[0] for user in users]
    try:
        yield opened
    finally:
        for client in opened:
            await client.close()


async def error_of(client: WsClient, method: str, params: Any) -> dict[str, Any]:
    reply = await client.request(method, params)
    assert "error" in reply, reply
    error: dict[str, Any] = reply["error"]
    return error


# ------------------------------------------------------------------------------------- happy paths


async def test_connected_reports_the_counters(env: Env, db: asyncpg.Connection) -> None:
    user = fresh_id()
    await seed(db, user, 3)
    client, connected = await env.connect(user)
    await client.close()
    assert connected["user_id"] == user
    assert (connected["unread_count"], connected["last_seq"]) == (3, 3)


async def test_every_method_answers_through_the_gateway(env: Env, db: asyncpg.Connection) -> None:
    user = fresh_id()
    await seed(db, user, 8)
    ids = [f"{user}-{seq}" for seq in range(1, 9)]
    async with clients(env, user) as (client,):
        page = await client.result("notifications.list", {"limit": 3})
        assert [item["seq"] for item in page["items"]] == [8, 7, 6]
        assert (page["next_cursor"], page["total"], page["unread_count"]) == (6, 8, 8)
        synced = await client.result("notifications.sync", {"since": 5})
        assert [item["id"] for item in synced["items"]] == ids[5:]
        assert synced["has_more"] is False
        assert await client.result("notifications.unread_count") == {
            "count": 8,
            "unseen_count": 8,
            "last_seq": 8,
        }
        assert await client.result("notifications.mark_read", {"ids": ids[:3]}) == {
            "updated": 3,
            "unread_count": 5,
            "unseen_count": 5,
            "last_seq": 8,
        }
        assert await client.result("notifications.mark_unread", {"ids": ids[:1]}) == {
            "updated": 1,
            "unread_count": 6,
            "unseen_count": 5,
            "last_seq": 8,
        }
        assert await client.result("notifications.delete", {"ids": ids[:2]}) == {
            "deleted": 2,
            "unread_count": 5,
            "unseen_count": 5,
            "last_seq": 8,
        }
        assert await client.result("notifications.mark_all_read") == {
            "updated": 5,
            "unread_count": 0,
            "unseen_count": 0,
            "last_seq": 8,
        }
        defaults = await client.result("preferences.get")
        assert defaults["types"]["NEW_COMMENT"] == {"in_app": True, "email": False, "push": False}
        updated = await client.result("preferences.update", {"types": {"NEW_COMMENT": {"push": True}}})
        assert updated["types"]["NEW_COMMENT"] == {"in_app": True, "email": False, "push": True}
        assert await client.result("preferences.reset") == defaults
        forbidden = await error_of(client, "notifications.broadcast", {"title": "Hello"})
        assert forbidden["code"] == 4003
    assert await unread_truth(db, user) == (0, 0)

    admin, _ = await env.connect(fresh_id("admin"), admin=True)
    try:
        accepted = await admin.result("notifications.broadcast", {"title": "Hello everyone"})
        assert accepted["accepted"] is True
        assert accepted["event_id"]
        # The admin is a known user: their live copy means the broadcast is stored everywhere, so it
        # cannot land in a later test's counts.
        delivered = await admin.next_event("notification:new")
        assert (delivered["title"], delivered["seq"]) == ("Hello everyone", None)
    finally:
        await admin.close()


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("notifications.list", {"limit": 0}, "limit"),
        ("notifications.list", {"before": "x"}, "before"),
        ("notifications.list", {"types": ["BOGUS"]}, "types.0"),
        ("notifications.sync", {"limit": 501}, "limit"),
        ("notifications.sync", {"since": -1}, "since"),
        ("notifications.unread_count", {"extra": 1}, "extra"),
        ("notifications.mark_read", {"ids": "a"}, "ids"),
        ("notifications.mark_unread", {"ids": [7]}, "ids.0"),
        ("notifications.delete", {"ids": [f"x{i}" for i in range(501)]}, "ids"),
        ("notifications.mark_all_read", {"all": True}, "all"),
        ("preferences.get", {"user": "someone-else"}, "user"),
        (
            "preferences.update",
            {"types": {"SECURITY_ALERT": {"in_app": False}}},
            "types.SECURITY_ALERT.in_app",
        ),
        ("preferences.update", {"quiet_hours": {"start": "7am", "end": "09:00"}}, "quiet_hours.start"),
        ("preferences.reset", {"now": True}, "now"),
    ],
)
async def test_bad_params_name_the_field(env: Env, method: str, params: Any, field: str) -> None:
    async with clients(env, fresh_id()) as (client,):
        error = await error_of(client, method, params)
    assert error["code"] == -32602
    assert error["data"] == field


async def test_bad_broadcast_params_name_the_field_for_an_admin(env: Env) -> None:
    admin, _ = await env.connect(fresh_id("admin"), admin=True)
    try:
        error = await error_of(admin, "notifications.broadcast", {"title": ""})
    finally:
        await admin.close()
    assert (error["code"], error["data"]) == (-32602, "title")


# ------------------------------------------------------------------------------------------ events


@pytest.fixture(scope="module")
def other_gateway(env: Env) -> HeraldProcess:
    """A second gateway process on the same stack."""
    return env.stack.start_gateway()


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-gateway", "other-gateway"])
async def test_a_second_connection_receives_every_event_with_the_unread_count(
    env: Env, db: asyncpg.Connection, other_gateway: HeraldProcess, elsewhere: bool
) -> None:
    user = fresh_id()
    await seed(db, user, 6)
    ids = [f"{user}-{seq}" for seq in range(1, 7)]
    acting, _ = await env.connect(user)
    watching = await WsClient.connect((other_gateway if elsewhere else env.gateway).ws_url, user)
    await watching.next_event("connected")
    async with contextlib.AsyncExitStack() as closing:
        closing.push_async_callback(acting.close)
        closing.push_async_callback(watching.close)
        steps: list[tuple[str, Any, str, dict[str, Any]]] = [
            (
                "notifications.mark_read",
                {"ids": ids[:2]},
                "notification:read",
                {"ids": ids[:2], "unread_count": 4, "unseen_count": 4, "last_seq": 6},
            ),
            (
                "notifications.mark_unread",
                {"ids": ids[1:2]},
                "notification:unread",
                {"ids": ids[1:2], "unread_count": 5, "unseen_count": 4, "last_seq": 6},
            ),
            (
                "notifications.delete",
                {"ids": [ids[2], ids[0]]},
                "notification:deleted",
                {"ids": [ids[0], ids[2]], "unread_count": 4, "unseen_count": 3, "last_seq": 6},
            ),
            (
                "notifications.mark_all_read",
                None,
                "notification:read",
                {"all": True, "unread_count": 0, "unseen_count": 0, "last_seq": 6},
            ),
        ]
        # Each connection's very next frame is the event: nothing else, nothing missing.
        for method, params, event, expected in steps:
            await acting.result(method, params)
            for client in (watching, acting):
                assert await client.next_frame() == {"jsonrpc": "2.0", "method": event, "params": expected}

        updated = await acting.result("preferences.update", {"channels": {"email": False}})
        assert (await watching.next_frame())["params"] == updated
        reset = await acting.result("preferences.reset")
        assert (await watching.next_frame())["params"] == reset
        assert watching.drain() == []


async def test_another_users_ids_change_nothing_and_reveal_nothing(env: Env, db: asyncpg.Connection) -> None:
    owner, intruder = fresh_id("owner"), fresh_id("intruder")
    await seed(db, owner, 4)
    await seed(db, intruder, 1)
    theirs = [f"{owner}-{seq}" for seq in range(1, 5)]
    async with clients(env, owner, intruder) as (owner_client, intruder_client):
        listing_before = await owner_client.result("notifications.list")
        for method, counted in (
            ("notifications.mark_read", "updated"),
            ("notifications.mark_unread", "updated"),
            ("notifications.delete", "deleted"),
        ):
            # Someone else's ids and ids that exist nowhere get the very same answer.
            nothing = {counted: 0, "unread_count": 1, "unseen_count": 1, "last_seq": 1}
            assert await intruder_client.result(method, {"ids": theirs}) == nothing
            assert await intruder_client.result(method, {"ids": ["no-such-id"]}) == nothing
        listed = await intruder_client.result("notifications.list", {"limit": 100})
        assert [item["id"] for item in listed["items"]] == [f"{intruder}-1"]

        assert await owner_client.result("notifications.list") == listing_before
        assert await unread_truth(db, owner) == (4, 4)
        # The owner's next frame is one of their own making: the intruder's requests published nothing.
        await owner_client.result("notifications.mark_read", {"ids": theirs[:1]})
        assert await owner_client.next_frame() == {
            "jsonrpc": "2.0",
            "method": "notification:read",
            "params": {"ids": theirs[:1], "unread_count": 3, "unseen_count": 3, "last_seq": 4},
        }
