"""Request methods that change state, in process: what they answer, store and publish.

mark_read / mark_unread / delete / mark_all_read keep the unread counter exact (also under concurrency,
and another user's ids change and reveal nothing), preferences.update / reset merge, validate and publish
``preferences:updated``, and notifications.broadcast is admin-only and becomes a broadcast event. Events
are read back from a private queue bound to ``herald.users`` (:class:`Events`). The worker state, the
module's own ``stack`` (imported, so this module gets one of its own) and the request helpers come from
test_requests.py.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import pytest

from herald_ops.testing.requests import next_message, seed, unread_truth, visible_counts
from herald_ops.testing.stack import fresh_id, wait_until
from shared.topology import BROADCAST_ROUTING_KEY
from tests.integration.test_requests import TOPOLOGY, call, invalid_field, result, stack, worker_state

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from aio_pika.abc import AbstractChannel, AbstractQueue

    from worker.runtime import Runtime

pytestmark = pytest.mark.timeout(60)
__all__ = ["stack", "worker_state"]  # module-scoped fixtures of test_requests (this module gets its own)


@pytest.fixture
async def channel(amqp: aio_pika.abc.AbstractRobustConnection) -> AsyncIterator[AbstractChannel]:
    ch = await amqp.channel()
    yield ch
    await ch.close()


class Events:
    """The frames published to ``herald.users`` for one user, read from a private bound queue."""

    def __init__(self, queue: AbstractQueue, user_id: str, runtime: Runtime) -> None:
        self.queue = queue
        self.user_id = user_id
        self.runtime = runtime

    @classmethod
    async def listen(cls, channel: AbstractChannel, user_id: str, runtime: Runtime) -> Events:
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(TOPOLOGY.users_exchange, user_id)
        return cls(queue, user_id, runtime)

    async def _next_message(self) -> aio_pika.abc.AbstractIncomingMessage:
        got: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def arrived() -> bool:
            message = await self.queue.get(no_ack=True, fail=False)
            if message is not None:
                got.append(message)
            return bool(got)

        await wait_until(arrived, 10, f"a frame on herald.users for {self.user_id}")
        return got[0]

    async def next(self) -> tuple[str, Any]:
        """(method, params) of the next frame, checking its AMQP properties."""
        message = await self._next_message()
        frame = orjson.loads(message.body)
        assert message.type == frame["method"]
        assert message.content_type == "application/json"
        return frame["method"], frame["params"]

    async def assert_none(self) -> None:
        """Nothing was published: a marker sent now is the next frame in the queue."""
        marker = b'{"marker":true}'
        await self.runtime.publisher.users.publish(aio_pika.Message(marker), routing_key=self.user_id)
        message = await self._next_message()
        assert message.body == marker, f"unexpected frame {message.body!r}"


# ---------------------------------------------------------------------------------------- mutations


async def test_mark_read_unread_delete_keep_the_counter_and_publish_events(
    worker_state: Runtime, pg: asyncpg.Connection, channel: AbstractChannel
) -> None:
    user = fresh_id()
    await seed(pg, user, 10)
    events = await Events.listen(channel, user, worker_state)
    ids = [f"{user}-{s}" for s in (3, 1, 2)]

    # Reading is seeing: the unseen count falls with the unread one.
    assert await result(worker_state, "notifications.mark_read", {"ids": [*ids, ids[0]]}, user=user) == {
        "updated": 3,
        "unread_count": 7,
        "unseen_count": 7,
        "last_seq": 10,
    }
    assert await events.next() == (
        "notification:read",
        {"ids": [f"{user}-{s}" for s in (1, 2, 3)], "unread_count": 7, "unseen_count": 7, "last_seq": 10},
    )

    # Already read: nothing changes, nothing is published.
    assert await result(worker_state, "notifications.mark_read", {"ids": ids[:1]}, user=user) == {
        "updated": 0,
        "unread_count": 7,
        "unseen_count": 7,
        "last_seq": 10,
    }
    await events.assert_none()

    assert await result(
        worker_state, "notifications.mark_unread", {"ids": [ids[0], f"{user}-9"]}, user=user
    ) == {
        "updated": 1,
        "unread_count": 8,
        "unseen_count": 7,
        "last_seq": 10,  # unread again, but still seen
    }
    assert await events.next() == (
        "notification:unread",
        {"ids": [ids[0]], "unread_count": 8, "unseen_count": 7, "last_seq": 10},
    )

    deleted = await result(
        worker_state, "notifications.delete", {"ids": [f"{user}-1", f"{user}-4", "missing"]}, user=user
    )
    assert deleted == {
        "deleted": 2,
        "unread_count": 7,
        "unseen_count": 6,
        "last_seq": 10,
    }  # seq 1 was read, seq 4 unread
    assert await events.next() == (
        "notification:deleted",
        {"ids": [f"{user}-1", f"{user}-4"], "unread_count": 7, "unseen_count": 6, "last_seq": 10},
    )
    assert await unread_truth(pg, user) == (7, 7)

    assert await result(worker_state, "notifications.unread_count", user=user) == {
        "count": 7,
        "unseen_count": 6,
        "last_seq": 10,  # deletes do not take seqs back
    }
    assert await result(worker_state, "notifications.mark_all_read", user=user) == {
        "updated": 7,
        "unread_count": 0,
        "unseen_count": 0,
        "last_seq": 10,
    }
    assert await events.next() == (
        "notification:read",
        {"all": True, "unread_count": 0, "unseen_count": 0, "last_seq": 10},
    )
    assert await result(worker_state, "notifications.mark_all_read", user=user) == {
        "updated": 0,
        "unread_count": 0,
        "unseen_count": 0,
        "last_seq": 10,
    }
    await events.assert_none()
    assert await unread_truth(pg, user) == (0, 0)


@pytest.mark.parametrize(
    "method", ["notifications.mark_read", "notifications.mark_unread", "notifications.delete"]
)
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "ids"),
        ({"ids": "n-1"}, "ids"),
        ({"ids": [1]}, "ids.0"),
        ({"ids": [""]}, "ids.0"),
        ({"ids": ["n-1", "n\u0000"]}, "ids.1"),  # Postgres text cannot hold NUL: no id has one
        ({"ids": [f"n-{i}" for i in range(501)]}, "ids"),
    ],
)
async def test_id_methods_bad_params_name_the_field(
    worker_state: Runtime, method: str, params: Any, field: str
) -> None:
    assert await invalid_field(worker_state, method, params, user=fresh_id()) == field


async def test_other_users_ids_change_nothing_and_reveal_nothing(
    worker_state: Runtime, pg: asyncpg.Connection, channel: AbstractChannel
) -> None:
    owner, intruder = fresh_id("owner"), fresh_id("intruder")
    await seed(pg, owner, 5)
    await seed(pg, intruder, 2)
    owner_events = await Events.listen(channel, owner, worker_state)
    intruder_events = await Events.listen(channel, intruder, worker_state)
    theirs = [f"{owner}-{s}" for s in range(1, 6)]

    for method in ("notifications.mark_read", "notifications.delete"):
        answer = await result(worker_state, method, {"ids": theirs}, user=intruder)
        assert answer == {
            "updated" if method.endswith("read") else "deleted": 0,
            "unread_count": 2,
            "unseen_count": 2,
            "last_seq": 2,
        }
    await pg.execute("UPDATE notifications SET read_at = now() WHERE user_id = $1 AND seq = 1", owner)
    await pg.execute("UPDATE users SET unread_count = 4 WHERE user_id = $1", owner)
    before = await pg.fetch("SELECT seq, read_at FROM notifications WHERE user_id = $1 ORDER BY seq", owner)
    assert (await result(worker_state, "notifications.mark_unread", {"ids": theirs}, user=intruder))[
        "updated"
    ] == 0
    listed = await result(worker_state, "notifications.list", {"limit": 100}, user=intruder)
    assert {item["id"] for item in listed["items"]} == {f"{intruder}-1", f"{intruder}-2"}

    assert (
        await pg.fetch("SELECT seq, read_at FROM notifications WHERE user_id = $1 ORDER BY seq", owner)
        == before
    )
    assert await unread_truth(pg, owner) == (4, 4)
    await owner_events.assert_none()
    await intruder_events.assert_none()


async def test_concurrent_mutations_of_one_user_keep_the_counter_exact(
    worker_state: Runtime, pg: asyncpg.Connection
) -> None:
    user = fresh_id()
    await seed(pg, user, 200)
    rng = random.Random(4)
    methods = ["notifications.mark_read", "notifications.mark_unread", "notifications.delete"]

    async def one() -> None:
        ids = [f"{user}-{rng.randint(1, 200)}" for _ in range(rng.randint(1, 30))]
        await result(worker_state, rng.choice(methods), {"ids": ids}, user=user)

    await asyncio.gather(*(one() for _ in range(150)), seed(pg, user, 20))
    counter, actual = await unread_truth(pg, user)
    assert counter == actual
    final = await result(worker_state, "notifications.unread_count", user=user)
    last_seq = await pg.fetchval("SELECT last_seq FROM users WHERE user_id = $1", user)
    unseen = (await visible_counts(pg, user))["unseen_count"]
    assert final == {"count": actual, "unseen_count": unseen, "last_seq": last_seq}


# -------------------------------------------------------------------------------------- preferences


async def test_preferences_update_merges_validates_and_publishes(
    worker_state: Runtime, channel: AbstractChannel
) -> None:
    user = fresh_id()
    events = await Events.listen(channel, user, worker_state)
    defaults = await result(worker_state, "preferences.get", user=user)
    assert defaults["updated_at"] is None
    assert defaults["types"]["COURSE_NEW_CONTENT"] == {"in_app": True, "email": False, "push": True}

    first = await result(
        worker_state, "preferences.update", {"types": {"COURSE_NEW_CONTENT": {"email": True}}}, user=user
    )
    assert first["types"]["COURSE_NEW_CONTENT"] == {"in_app": True, "email": True, "push": True}
    assert first["updated_at"] is not None
    assert await events.next() == ("preferences:updated", first)

    second = await result(
        worker_state,
        "preferences.update",
        {
            "channels": {"push": False},
            "types": {"COURSE_NEW_CONTENT": {"in_app": False}},
            "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
        },
        user=user,
    )
    # Deep merge: the earlier email switch of the same type survives.
    assert second["types"]["COURSE_NEW_CONTENT"] == {"in_app": False, "email": True, "push": True}
    assert second["channels"] == {"in_app": True, "email": True, "push": False}
    assert second["quiet_hours"] == {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
    assert await events.next() == ("preferences:updated", second)
    assert await result(worker_state, "preferences.get", user=user) == second

    # Sending back what get returned (with updated_at) changes nothing and publishes nothing.
    assert await result(worker_state, "preferences.update", second, user=user) == second
    await events.assert_none()

    reset = await result(worker_state, "preferences.reset", user=user)
    assert reset == defaults
    assert await events.next() == ("preferences:updated", defaults)
    assert await result(worker_state, "preferences.reset", user=user) == defaults
    await events.assert_none()


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"types": {"SECURITY_ALERT": {"in_app": False}}}, "types.SECURITY_ALERT.in_app"),
        ({"types": {"SECURITY_ALERT": {"email": False}}}, "types.SECURITY_ALERT.email"),
        ({"types": {"NOPE": {"email": False}}}, "types.NOPE"),
        ({"channels": {"sms": True}}, "channels.sms"),
        ({"channels": {"push": "off"}}, "channels.push"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}},
            "quiet_hours.timezone",
        ),
        ({"colour": "blue"}, "colour"),
        ([], "params"),
    ],
)
async def test_preferences_update_bad_params_name_the_field(
    worker_state: Runtime, update: Any, field: str
) -> None:
    user = fresh_id()
    assert await invalid_field(worker_state, "preferences.update", update, user=user) == field
    assert (await result(worker_state, "preferences.get", user=user))["updated_at"] is None


async def test_security_alert_push_may_be_turned_off(worker_state: Runtime) -> None:
    user = fresh_id()
    doc = await result(
        worker_state, "preferences.update", {"types": {"SECURITY_ALERT": {"push": False}}}, user=user
    )
    assert doc["types"]["SECURITY_ALERT"] == {"in_app": True, "email": True, "push": False}


# ---------------------------------------------------------------------------------------- broadcast


async def test_broadcast_is_admin_only_and_becomes_a_broadcast_event(
    worker_state: Runtime, channel: AbstractChannel
) -> None:
    probe = await channel.declare_queue(exclusive=True)
    await probe.bind(TOPOLOGY.events_exchange, BROADCAST_ROUTING_KEY)
    params = {"title": "Maintenance", "message": "Tonight 22:00", "data": {"window": "2h"}}

    denied = await call(worker_state, "notifications.broadcast", params, user=fresh_id())
    assert denied["error"]["code"] == 4003
    # Refused before validation: a non-admin learns nothing about the params.
    denied = await call(worker_state, "notifications.broadcast", {"type": 5}, user=fresh_id())
    assert denied["error"]["code"] == 4003

    accepted = await call(worker_state, "notifications.broadcast", params, user=fresh_id(), admin=True)
    event_id = accepted["result"]["event_id"]
    assert accepted["result"] == {"accepted": True, "event_id": event_id}
    message = await next_message(probe, 10)
    assert message.routing_key == BROADCAST_ROUTING_KEY
    assert message.message_id == event_id
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert orjson.loads(message.body) == {
        "event_id": event_id,
        "type": "SYSTEM_ANNOUNCEMENT",
        "actions": [],
        **params,
    }

    for bad, field in (
        ({"message": "no title"}, "title"),
        ({"title": "t", "type": "NOPE"}, "type"),
        ({"title": "t", "user_id": "someone"}, "user_id"),
        ({"title": "t", "data": {"blob": "x" * 9000}}, "data"),
        ({"title": "t", "event_id": "é" * 200}, "event_id"),  # 400 bytes: no AMQP message_id holds it
    ):
        reply = await call(worker_state, "notifications.broadcast", bad, user=fresh_id(), admin=True)
        assert reply["error"]["code"] == -32602
        assert reply["error"]["data"] == field
