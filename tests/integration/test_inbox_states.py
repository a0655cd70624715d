"""Inbox states beyond read (docs/protocol.md §10) end to end: real worker processes, a real gateway, two
connections ("tabs") of one user, and the truth counted row by row in Postgres after every step.

- seen / read / archive / act / delete mixed on the same items: every result, every event on both tabs,
  ``notifications.unread_count``, ``notifications.list`` and ``connected`` agree with the truth;
- expiry: an expired notification leaves list, sync and counts with no retention pass, then retention
  deletes it without moving the counts;
- ``notifications.act`` reaches ``herald.outcomes`` (a consumer bound to it checks the ids).

Collapse is in test_inbox_states_collapse.py, which imports this module's ``env`` fixture and helpers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import pytest

from herald_ops.testing.requests import WsClient, next_message, visible_counts
from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from shared.topology import Topology
from tests.integration.test_requests_gateway import db, producer
from worker.store.retention import retention_step

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import asyncpg

    from herald_client.producer import Producer
    from herald_ops.testing.stack import HeraldProcess, Stack

TOPOLOGY = Topology()
ACTIONS = [
    {"id": "accept", "label": "Accept invitation", "url": "https://app.example/accept"},
    {"id": "decline", "label": "Decline"},
]
pytestmark = pytest.mark.timeout(180)
__all__ = ["db", "producer"]  # fixtures shared with test_requests_gateway (they take this module's env)


@dataclass
class Env:
    stack: Stack
    workers: list[HeraldProcess]
    gateway: HeraldProcess

    async def tab(self, user: str) -> tuple[WsClient, dict[str, Any]]:
        """One more connection of ``user`` and its ``connected`` params."""
        client = await WsClient.connect(self.gateway.ws_url, user)
        return client, await client.next_event("connected")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """A stack of its own: two workers taking small batches (so one key's events spread over both), and
    one gateway."""
    with stack_context() as stack:
        workers = [stack.start_worker(prefetch=5, batch_size=5) for _ in range(2)]
        yield Env(stack, workers, stack.start_gateway())


@contextlib.asynccontextmanager
async def two_tabs(env: Env, user: str) -> AsyncIterator[tuple[WsClient, WsClient]]:
    first, _ = await env.tab(user)
    second, _ = await env.tab(user)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def stored(db: asyncpg.Connection, user: str, count: int) -> list[asyncpg.Record]:
    """Wait until ``user`` has ``count`` notifications; return them in seq order."""
    rows: list[asyncpg.Record] = []

    async def arrived() -> bool:
        rows[:] = await db.fetch("SELECT * FROM notifications WHERE user_id = $1 ORDER BY seq", user)
        return len(rows) >= count

    await wait_until(arrived, 30, f"{count} notifications of {user}")
    return rows


def by_key(rows: list[asyncpg.Record], key: str) -> asyncpg.Record:
    return next(row for row in rows if row["idempotency_key"] == key)


def counts_of(params: dict[str, Any]) -> dict[str, int]:
    return {"unread_count": params["unread_count"], "unseen_count": params["unseen_count"]}


async def assert_counts_agree(client: WsClient, db: asyncpg.Connection, user: str) -> dict[str, int]:
    """The request methods' counts equal the truth counted in Postgres; returns them."""
    truth = await visible_counts(db, user)
    counted = await client.result("notifications.unread_count")
    assert {"unread_count": counted["count"], "unseen_count": counted["unseen_count"]} == truth
    everything = await client.result("notifications.list", {"limit": 100, "archived": None})
    assert counts_of(everything) == truth
    assert sum(item["read_at"] is None for item in everything["items"]) == truth["unread_count"]
    assert sum(item["seen_at"] is None for item in everything["items"]) == truth["unseen_count"]
    return truth


# ------------------------------------------------------------------------------------ seen, archive


async def test_mixed_seen_read_archive_act_delete_keep_every_count_in_agreement_on_two_tabs(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    user = fresh_id()
    for n in range(6):
        await producer.send(
            user,
            "NEW_COMMENT",
            f"comment {n}",
            event_id=f"{user}-e{n}",
            url="https://app.example/c",
            actions=ACTIONS,
        )
    ids = [row["id"] for row in await stored(db, user, 6)]
    async with two_tabs(env, user) as (acting, watching):
        assert await assert_counts_agree(acting, db, user) == {"unread_count": 6, "unseen_count": 6}
        steps: list[tuple[str, dict[str, Any], str]] = [
            ("notifications.mark_seen", {"ids": ids[:2]}, "notification:seen"),
            ("notifications.mark_read", {"ids": [ids[1], ids[2]]}, "notification:read"),  # 2 was unseen
            ("notifications.archive", {"ids": [ids[0], ids[2], ids[3]]}, "notification:archived"),
            ("notifications.mark_unread", {"ids": [ids[2]]}, "notification:unread"),  # stays seen
            ("notifications.act", {"id": ids[3], "action_id": "accept"}, "notification:acted"),
            ("notifications.delete", {"ids": [ids[0], ids[4]]}, "notification:deleted"),
            ("notifications.unarchive", {"ids": [ids[2]]}, "notification:unarchived"),
            ("notifications.mark_seen", {"all": True}, "notification:seen"),
            ("notifications.mark_all_read", {}, "notification:read"),
        ]
        for method, params, event in steps:
            answer = await acting.result(method, params)
            truth = await assert_counts_agree(acting, db, user)
            assert counts_of(answer) == truth, method
            for tab in (acting, watching):
                frame = await tab.next_frame()
                assert frame["method"] == event, method
                assert counts_of(frame["params"]) == truth, method
            third, connected = await env.tab(user)  # a tab opened now starts from the same counts
            await third.close()
            assert counts_of(connected) == truth, method
        assert watching.drain() == acting.drain() == []

        inbox = await acting.result("notifications.list", {"limit": 100})
        archive = await acting.result("notifications.list", {"limit": 100, "archived": True})
        assert {item["id"] for item in inbox["items"]} == {ids[1], ids[2], ids[5]}
        assert [item["id"] for item in archive["items"]] == [ids[3]]
        # Archived items still count: the acted one is read now, and nothing is unread or unseen.
        assert (inbox["total"], archive["total"], inbox["unread_count"], inbox["unseen_count"]) == (
            3,
            1,
            0,
            0,
        )
        acted = archive["items"][0]
        assert (acted["action_id"], acted["read_at"] is not None, acted["actions"]) == (
            "accept",
            True,
            ACTIONS,
        )


async def test_bad_params_of_the_new_methods_name_the_field(env: Env) -> None:
    async with two_tabs(env, fresh_id()) as (tab, _):
        for method, params, field in (
            ("notifications.mark_seen", {}, "params"),
            ("notifications.mark_seen", {"ids": ["a"], "all": True}, "params"),
            ("notifications.mark_seen", {"ids": ["x"] * 501}, "ids"),
            ("notifications.archive", {"ids": "a"}, "ids"),
            ("notifications.act", {"id": "a"}, "action_id"),
            ("notifications.act", {"id": "a", "action_id": "no spaces"}, "action_id"),
            ("notifications.list", {"archived": "yes"}, "archived"),
        ):
            reply = await tab.request(method, params)
            assert reply["error"]["code"] == -32602, (method, params)
            assert reply["error"]["data"] == field, (method, params)


# ------------------------------------------------------------------------------------------ actions


async def test_act_records_once_tells_every_tab_and_reaches_herald_outcomes(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    user, other = fresh_id(), fresh_id("other")
    await producer.send(
        user, "INSTRUCTOR_MESSAGE", "Join the course?", data={"course": "42"}, actions=ACTIONS
    )
    (row,) = await stored(db, user, 1)
    connection = await aio_pika.connect(env.stack.amqp_url)
    async with connection, two_tabs(env, user) as (acting, watching):
        channel = await connection.channel()
        outcomes = await channel.declare_queue(exclusive=True)
        await outcomes.bind(TOPOLOGY.outcomes_exchange, routing_key="INSTRUCTOR_MESSAGE")

        answer = await acting.result("notifications.act", {"id": row["id"], "action_id": "accept"})
        assert answer["acted"] is True
        assert (answer["action_id"], answer["unread_count"], answer["unseen_count"]) == ("accept", 0, 0)
        for tab in (acting, watching):
            event = await tab.next_event("notification:acted")
            assert (event["id"], event["action_id"], event["acted_at"]) == (
                row["id"],
                "accept",
                answer["acted_at"],
            )
        message = await next_message(outcomes)
        assert message.routing_key == "INSTRUCTOR_MESSAGE"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.message_id == f"{row['id']}:{user}"
        assert orjson.loads(message.body) == {
            "notification_id": row["id"],
            "user_id": user,
            "type": "INSTRUCTOR_MESSAGE",
            "action_id": "accept",
            "acted_at": answer["acted_at"],
            "data": {"course": "42"},
        }

        # The same choice again publishes the outcome again (a retry) and changes nothing else.
        again = await acting.result("notifications.act", {"id": row["id"], "action_id": "accept"})
        assert (again["acted"], again["acted_at"]) == (False, answer["acted_at"])
        repeat = await next_message(outcomes)
        assert repeat.message_id == message.message_id
        # Another choice, an action the notification does not offer, someone else's notification.
        for params in (
            {"id": row["id"], "action_id": "decline"},
            {"id": row["id"], "action_id": "unknown"},
        ):
            reply = await acting.request("notifications.act", params)
            assert (reply["error"]["code"], reply["error"]["data"]) == (-32602, "action_id")
        async with two_tabs(env, other) as (intruder, _):
            foreign = await intruder.result("notifications.act", {"id": row["id"], "action_id": "accept"})
            assert (foreign["acted"], foreign["action_id"]) == (False, None)
        assert acting.drain() == watching.drain() == []
        assert await outcomes.get(no_ack=True, fail=False) is None
    recorded = await db.fetchrow("SELECT acted_at, action_id FROM notifications WHERE id = $1", row["id"])
    assert recorded is not None
    assert recorded["action_id"] == "accept"


# ------------------------------------------------------------------------------------------- expiry


async def test_an_expired_notification_leaves_list_sync_and_counts_without_a_retention_pass(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    user = fresh_id()
    soon = datetime.now(UTC) + timedelta(seconds=2)
    await producer.send(user, "COURSE_UPDATE", "expires soon", event_id=f"{user}-x", expires_at=soon)
    await producer.send(user, "COURSE_UPDATE", "stays", event_id=f"{user}-y")
    rows = await stored(db, user, 2)
    expiring, staying = by_key(rows, f"{user}-x"), by_key(rows, f"{user}-y")
    async with two_tabs(env, user) as (tab, _):

        async def gone() -> bool:
            page = await tab.result("notifications.list", {"limit": 100, "archived": None})
            return [item["id"] for item in page["items"]] == [staying["id"]]

        await wait_until(gone, 30, "the expired notification to leave the list")
        assert await assert_counts_agree(tab, db, user) == {"unread_count": 1, "unseen_count": 1}
        # The inbox's total is the maintained counter minus the expired row it still holds.
        assert (await tab.result("notifications.list", {}))["total"] == 1
        synced = await tab.result("notifications.sync", {"since": 0})
        assert [item["id"] for item in synced["items"]] == [staying["id"]]
        third, connected = await env.tab(user)
        await third.close()
        assert counts_of(connected) == {"unread_count": 1, "unseen_count": 1}
        # Gone for every change too: marking it read or deleting it changes nothing.
        read = await tab.result("notifications.mark_read", {"ids": [expiring["id"]]})
        assert (read["updated"], read["unread_count"]) == (0, 1)
        assert tab.drain() == []
    # Nothing deleted it yet: the row is still there, left out by the queries alone.
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", user) == 2

    deleted = await retention_step(db, 90, 1000)
    assert deleted >= 1
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE id = $1", expiring["id"]) == 0
    assert await visible_counts(db, user) == {"unread_count": 1, "unseen_count": 1}
    assert await db.fetchval("SELECT inbox_count FROM users WHERE user_id = $1", user) == 1
