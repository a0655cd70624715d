"""Request methods (worker.rpc + worker.requests) against real Postgres and RabbitMQ, in process.

Each request goes through :func:`worker.rpc.handle_request` with a gateway's envelope bytes, exactly what
the ``herald.rpc`` subscriber runs; events are read back from a queue bound to ``herald.users``. The same
methods over AMQP with a real worker process, and through the real gateway, are in
``test_requests_amqp.py`` and ``test_requests_gateway.py``.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import pytest
from faststream.rabbit import RabbitBroker

from herald_ops.testing.requests import next_message, seed, unread_truth, visible_counts
from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from shared.coalesce import Coalescer
from shared.jsonrpc import SESSIONS_PER_REQUEST
from shared.settings import Settings
from shared.topology import BROADCAST_ROUTING_KEY, Topology
from worker.amqp import declare_topology
from worker.requests.common import Caller, Method, NoParams
from worker.requests.registry import METHODS
from worker.rpc import handle_request
from worker.runtime import Runtime
from worker.store import inbox
from worker.store.catalog import load_catalog
from worker.store.notifications import NOTIFICATION_FIELDS
from worker.store.pool import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import asyncpg
    from aio_pika.abc import AbstractChannel, AbstractQueue

    from herald_ops.testing.stack import Stack

TOPOLOGY = Topology()
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """This module's own vhost and database (overrides the session's, also for ``pg`` and ``amqp``).

    The broadcast test publishes a real broadcast event: in a shared vhost, some later test's worker
    would store it for everyone.
    """
    with stack_context() as own:
        yield own


@pytest.fixture(scope="module")
async def worker_state(stack: Stack) -> AsyncIterator[Runtime]:
    """What a worker builds at start: pool, catalog, a started broker, the publisher on herald.users."""
    settings = Settings(amqp_url=stack.amqp_url, database_url=stack.database_url)
    pool = await create_pool(settings)
    broker = RabbitBroker(settings.amqp_url, logger=None)
    await broker.start()
    # The worker's own start-up step: declares the topology and builds the publisher requests use.
    publisher = await declare_topology(broker, TOPOLOGY, confirm_frames=True)
    runtime = Runtime(settings, TOPOLOGY, broker, pool, publisher, await load_catalog(pool))
    try:
        yield runtime
    finally:
        await broker.stop()
        await pool.close()


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


async def call(
    worker_state: Runtime, method: str, params: Any = None, *, user: str, admin: bool = False
) -> dict[str, Any]:
    envelope: dict[str, Any] = {"method": method, "user_id": user, "admin": admin}
    if params is not None:
        envelope["params"] = params
    reply: dict[str, Any] = orjson.loads(await handle_request(worker_state, orjson.dumps(envelope)))
    return reply


async def result(worker_state: Runtime, method: str, params: Any = None, *, user: str) -> Any:
    reply = await call(worker_state, method, params, user=user)
    assert "result" in reply, reply
    return reply["result"]


async def invalid_field(worker_state: Runtime, method: str, params: Any, *, user: str) -> str:
    reply = await call(worker_state, method, params, user=user)
    assert reply["error"]["code"] == -32602, reply
    field: str = reply["error"]["data"]
    return field


# ---------------------------------------------------------------------------------------- envelope


async def test_unknown_method_and_bad_envelope_are_errors_not_exceptions(
    worker_state: Runtime,
) -> None:
    user = fresh_id()
    reply = await call(worker_state, "notifications.explode", user=user)
    assert reply["error"]["code"] == -32601
    for body in (b"not json", b"[]", b'{"method": "preferences.get"}', b'{"method": 1, "user_id": "u"}'):
        reply = orjson.loads(await handle_request(worker_state, body))
        assert reply["error"]["code"] == -32600, body
    # A user id that breaks PROTOCOL §4 never reaches SQL.
    reply = orjson.loads(
        await handle_request(worker_state, b'{"method": "session.open", "user_id": "bad user!"}')
    )
    assert reply["error"]["code"] == -32600


async def test_a_failing_method_is_an_internal_error_and_a_lost_database_is_unavailable(
    worker_state: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(worker_state: Runtime, caller: Caller, params: NoParams) -> None:
        raise KeyError("a bug")

    async def unreachable(worker_state: Runtime, caller: Caller, params: NoParams) -> None:
        raise ConnectionRefusedError("postgres is down")

    monkeypatch.setitem(METHODS, "test.broken", Method(NoParams, broken))
    monkeypatch.setitem(METHODS, "test.unreachable", Method(NoParams, unreachable))
    broken_reply = await call(worker_state, "test.broken", user=fresh_id())
    assert broken_reply == {"error": {"code": -32603, "message": "internal error"}}
    unreachable_reply = await call(worker_state, "test.unreachable", user=fresh_id())
    assert unreachable_reply["error"]["code"] == 5003


async def users_with_1_to_n_unread(pg: asyncpg.Connection, n: int) -> list[str]:
    """``n`` fresh users, the k-th with k unread notifications."""
    users = [fresh_id() for _ in range(n)]
    for count, user in enumerate(users, start=1):
        await seed(pg, user, count)
    return users


async def test_session_open_makes_the_user_known_and_reports_counters(
    worker_state: Runtime, pg: asyncpg.Connection
) -> None:
    user = fresh_id()
    opened = await result(worker_state, "session.open", user=user)
    assert (opened["unread_count"], opened["last_seq"]) == (0, 0)
    assert opened["preferences"]["types"]["SECURITY_ALERT"] == {"in_app": True, "email": True, "push": True}
    assert await pg.fetchval("SELECT count(*) FROM users WHERE user_id = $1", user) == 1

    await seed(pg, user, 5)
    again = await result(worker_state, "session.open", user=user)
    assert (again["unread_count"], again["last_seq"]) == (5, 5)


async def test_session_open_many_answers_what_session_open_answers_for_each_user(
    worker_state: Runtime, pg: asyncpg.Connection
) -> None:
    users = await users_with_1_to_n_unread(pg, 5)
    new = fresh_id()
    # A user named twice is answered once; the envelope's caller is only the first of them.
    many = await result(
        worker_state, "session.open_many", {"user_ids": [*users, new, users[0]]}, user=users[0]
    )
    assert set(many["sessions"]) == {*users, new}
    for user in [*users, new]:
        assert many["sessions"][user] == await result(worker_state, "session.open", user=user)
    assert await pg.fetchval("SELECT count(*) FROM users WHERE user_id = $1", new) == 1


@pytest.mark.parametrize(
    "user_ids",
    [[], [f"u{n}" for n in range(SESSIONS_PER_REQUEST + 1)], ["ok", "bad user!"], "u1", [7]],
    ids=["none", "too many", "invalid id", "not a list", "not a string"],
)
async def test_session_open_many_refuses_bad_user_lists(worker_state: Runtime, user_ids: Any) -> None:
    field = await invalid_field(worker_state, "session.open_many", {"user_ids": user_ids}, user="u1")
    assert field.startswith("user_ids")


async def test_concurrent_session_opens_of_a_new_user_all_succeed(worker_state: Runtime) -> None:
    # Several tabs connecting at once race to create the users row; each must still get its counters.
    user = fresh_id()
    opened = await asyncio.gather(*(result(worker_state, "session.open", user=user) for _ in range(20)))
    assert {(o["unread_count"], o["last_seq"]) for o in opened} == {(0, 0)}


async def test_concurrent_session_opens_of_many_users_share_statements_and_get_their_own_counters(
    worker_state: Runtime, pg: asyncpg.Connection
) -> None:
    # A reconnect storm: known users with different counters and one with a stored override, plus new
    # users, all at once. Each gets its own counters; the statements are fewer than the users.
    known = await users_with_1_to_n_unread(pg, 30)
    await pg.execute(
        "INSERT INTO user_preferences (user_id, types) VALUES ($1, $2::jsonb)",
        known[0],
        orjson.dumps({"NEW_COMMENT": {"email": True}}).decode(),
    )
    new = [fresh_id() for _ in range(30)]
    statements: list[list[str]] = []
    original = worker_state.sessions

    async def counted(user_ids: list[str]) -> dict[str, inbox.Session]:
        statements.append(user_ids)
        return await inbox.open_sessions(worker_state.pool, user_ids)

    counting = Coalescer(counted, 500)
    worker_state.sessions = counting
    try:
        opened = await asyncio.gather(
            *(result(worker_state, "session.open", user=user) for user in known + new)
        )
    finally:
        worker_state.sessions = original
    counters = [(o["unread_count"], o["last_seq"]) for o in opened]
    assert counters == [(n, n) for n in range(1, 31)] + [(0, 0)] * 30
    assert opened[0]["preferences"]["types"]["NEW_COMMENT"]["email"] is True
    assert opened[1]["preferences"]["types"]["NEW_COMMENT"]["email"] is False
    assert sorted(u for ids in statements for u in ids) == sorted(known + new)
    assert len(statements) < len(known + new)
    assert await pg.fetchval("SELECT count(*) FROM users WHERE user_id = ANY($1)", new) == 30


# ------------------------------------------------------------------------------------------- reads


async def test_list_pages_newest_first_with_cursor_total_and_unread(
    worker_state: Runtime, pg: asyncpg.Connection
) -> None:
    user = fresh_id()
    await seed(pg, user, 45)
    await pg.execute("UPDATE notifications SET read_at = now() WHERE user_id = $1 AND seq <= 10", user)
    await pg.execute("UPDATE users SET unread_count = 35 WHERE user_id = $1", user)

    seen: list[int] = []
    cursor = None
    while True:
        page = await result(
            worker_state, "notifications.list", {"before": cursor} if cursor else {}, user=user
        )
        assert (page["total"], page["unread_count"]) == (45, 35)
        seen += [item["seq"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == page["items"][-1]["seq"]
    assert seen == list(range(45, 0, -1))
    first = (await result(worker_state, "notifications.list", {"limit": 1}, user=user))["items"][0]
    assert set(first) == set(NOTIFICATION_FIELDS)
    assert set(NOTIFICATION_FIELDS) >= {
        "id",
        "seq",
        "type",
        "category",
        "title",
        "message",
        "data",
        "created_at",
        "read_at",
        "seen_at",
        "archived_at",
        "url",
        "actions",
        "acted_at",
        "action_id",
        "count",
        "expires_at",
    }
    assert first["id"] == f"{user}-45"
    assert first["read_at"] is None
    assert first["created_at"].endswith("Z")


async def test_list_filters(worker_state: Runtime, pg: asyncpg.Connection) -> None:
    user = fresh_id()
    await seed(pg, user, 20)  # types cycle: COURSE_NEW_CONTENT, GRADE_RELEASED, NEW_COMMENT, SYSTEM_...
    await result(
        worker_state, "notifications.mark_read", {"ids": [f"{user}-{s}" for s in (1, 2, 3)]}, user=user
    )

    unread = await result(worker_state, "notifications.list", {"unread_only": True, "limit": 100}, user=user)
    assert [item["seq"] for item in unread["items"]] == list(range(20, 3, -1))
    assert unread["total"] == unread["unread_count"] == 17

    grades = await result(worker_state, "notifications.list", {"types": ["GRADE_RELEASED"]}, user=user)
    assert {item["type"] for item in grades["items"]} == {"GRADE_RELEASED"}
    assert grades["total"] == 5

    mixed = await result(
        worker_state,
        "notifications.list",
        {"categories": ["social", "course"], "unread_only": True, "limit": 3},
        user=user,
    )
    assert [item["seq"] for item in mixed["items"]] == [19, 17, 15]
    assert mixed["total"] == 8  # odd seqs are course or social; seqs 1 and 3 are read
    assert mixed["next_cursor"] == 15


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "20"}, "limit"),
        ({"before": -5}, "before"),
        ({"before": 2**63}, "before"),  # past bigint: refused, not an internal error from the driver
        ({"unread_only": "yes"}, "unread_only"),
        ({"types": ["NOT_A_TYPE"]}, "types.0"),
        ({"types": "GRADE_RELEASED"}, "types"),
        ({"categories": ["course", "nope"]}, "categories.1"),
        ({"cursor": 3}, "cursor"),
        ([1, 2], "params"),
    ],
)
async def test_list_bad_params_name_the_field(worker_state: Runtime, params: Any, field: str) -> None:
    assert await invalid_field(worker_state, "notifications.list", params, user=fresh_id()) == field


async def test_sync_returns_everything_after_since_in_order(
    worker_state: Runtime, pg: asyncpg.Connection
) -> None:
    user = fresh_id()
    await seed(pg, user, 30)
    synced = await result(worker_state, "notifications.sync", {"since": 10}, user=user)
    assert [item["seq"] for item in synced["items"]] == list(range(11, 31))
    assert synced["has_more"] is False
    part = await result(worker_state, "notifications.sync", {"since": 10, "limit": 7}, user=user)
    assert [item["seq"] for item in part["items"]] == list(range(11, 18))
    assert part["has_more"] is True
    everything = await result(worker_state, "notifications.sync", user=user)
    assert len(everything["items"]) == 30
    assert await invalid_field(worker_state, "notifications.sync", {"limit": 501}, user=user) == "limit"
    assert await invalid_field(worker_state, "notifications.sync", {"since": -1}, user=user) == "since"
    assert await invalid_field(worker_state, "notifications.sync", {"since": 1.5}, user=user) == "since"
    assert await invalid_field(worker_state, "notifications.sync", {"since": 2**63}, user=user) == "since"


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
    }
    assert await events.next() == (
        "notification:read",
        {"ids": [f"{user}-{s}" for s in (1, 2, 3)], "unread_count": 7, "unseen_count": 7},
    )

    # Already read: nothing changes, nothing is published.
    assert await result(worker_state, "notifications.mark_read", {"ids": ids[:1]}, user=user) == {
        "updated": 0,
        "unread_count": 7,
        "unseen_count": 7,
    }
    await events.assert_none()

    assert await result(
        worker_state, "notifications.mark_unread", {"ids": [ids[0], f"{user}-9"]}, user=user
    ) == {
        "updated": 1,
        "unread_count": 8,
        "unseen_count": 7,  # unread again, but still seen
    }
    assert await events.next() == (
        "notification:unread",
        {"ids": [ids[0]], "unread_count": 8, "unseen_count": 7},
    )

    deleted = await result(
        worker_state, "notifications.delete", {"ids": [f"{user}-1", f"{user}-4", "missing"]}, user=user
    )
    assert deleted == {"deleted": 2, "unread_count": 7, "unseen_count": 6}  # seq 1 was read, seq 4 unread
    assert await events.next() == (
        "notification:deleted",
        {"ids": [f"{user}-1", f"{user}-4"], "unread_count": 7, "unseen_count": 6},
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
    }
    assert await events.next() == ("notification:read", {"all": True, "unread_count": 0, "unseen_count": 0})
    assert await result(worker_state, "notifications.mark_all_read", user=user) == {
        "updated": 0,
        "unread_count": 0,
        "unseen_count": 0,
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
    ):
        reply = await call(worker_state, "notifications.broadcast", bad, user=fresh_id(), admin=True)
        assert reply["error"]["code"] == -32602
        assert reply["error"]["data"] == field
