"""Request methods (worker.rpc + worker.requests) against real Postgres and RabbitMQ, in process: the envelope
and its errors, session.open / session.open_many, and the reads (notifications.list, notifications.sync).

Each request goes through :func:`worker.rpc.handle_request` with a gateway's envelope bytes, exactly what
the ``herald.rpc`` subscriber runs. The methods that change state (mark/delete, preferences, broadcast) and
the events they publish are in ``test_requests_mutations.py``, which takes this module's fixtures and
helpers. The same methods over AMQP with a real worker process, and through the real gateway, are in
``test_requests_amqp.py`` and ``test_requests_gateway.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from faststream.rabbit import RabbitBroker

from herald_ops.testing.requests import seed
from herald_ops.testing.stack import fresh_id, stack_context
from shared.coalesce import Coalescer
from shared.jsonrpc import SESSIONS_PER_REQUEST
from shared.settings import Settings
from shared.topology import Topology
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

    from herald_ops.testing.stack import Stack

TOPOLOGY = Topology()
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """This module's own vhost and database (overrides the session's, also for ``pg`` and ``amqp``).

    The broadcast test (test_requests_mutations.py, which imports this fixture and so gets a stack of its
    own) publishes a real broadcast event: in a shared vhost, some later test's worker would store it for
    everyone.
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


@pytest.mark.parametrize("expiration", ["soon", True, {"at": 1}])
async def test_a_bad_union_field_is_named_as_the_client_sent_it(
    worker_state: Runtime, expiration: Any
) -> None:
    # expirationTime is int | float | None: pydantic's loc adds the member it tried ("expirationTime.int").
    params = {"endpoint": "https://push.example/1", "keys": {"p256dh": "a", "auth": "b"}}
    reply = await call(
        worker_state, "push.subscribe", params | {"expirationTime": expiration}, user=fresh_id()
    )
    assert reply["error"] == {
        "code": -32602,
        "message": "invalid params: expirationTime: Input should be a valid integer or number",
        "data": "expirationTime",
    }


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
