"""``herald.rpc`` over the wire: a real worker process answers a gateway stand-in over direct reply-to."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import orjson
import pytest

from herald_client.producer import Producer
from herald_ops.testing.requests import AmqpRpc, next_message, seed, unread_truth
from herald_ops.testing.stack import fresh_id, http_get, stack_context, wait_until
from shared.topology import Topology

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import Stack

TOPOLOGY = Topology()
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def worker_stack() -> Iterator[Stack]:
    """A stack of its own with one worker process."""
    with stack_context() as stack:
        stack.start_worker()
        yield stack


@pytest.fixture
async def rpc(worker_stack: Stack) -> AsyncIterator[AmqpRpc]:
    client = await AmqpRpc.connect(worker_stack.amqp_url, TOPOLOGY.rpc_queue)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def db(worker_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(worker_stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_replies_carry_the_correlation_id_and_the_wire_format(rpc: AmqpRpc) -> None:
    user = fresh_id()
    replies: list[aio_pika.abc.AbstractIncomingMessage] = []
    # A second channel's own direct reply-to consumer, to look at the reply's properties.
    channel = await rpc.connection.channel()
    reply_queue = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)

    async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        replies.append(message)

    await reply_queue.consume(keep, no_ack=True)
    body = orjson.dumps({"method": "session.open", "params": {}, "user_id": user, "admin": False})
    await channel.default_exchange.publish(
        aio_pika.Message(
            body, reply_to="amq.rabbitmq.reply-to", correlation_id="c-42", expiration=10, user_id="guest"
        ),
        routing_key=TOPOLOGY.rpc_queue,
    )
    await wait_until(lambda: bool(replies), 10, "the session.open reply")
    reply = replies[0]
    assert reply.correlation_id == "c-42"
    assert reply.content_type == "application/json"
    opened = orjson.loads(reply.body)["result"]
    assert (opened["unread_count"], opened["last_seq"]) == (0, 0)
    assert opened["preferences"]["channels"] == {"in_app": True, "email": True, "push": True}
    # The gateway splices without parsing: the body is exactly one member, result or error.
    assert reply.body.startswith(b'{"result":')
    assert (await rpc.call("nope", user=user))["error"]["code"] == -32601
    bad = await rpc.call("notifications.list", {"limit": 1000}, user=user)
    assert bad["error"] == {
        "code": -32602,
        "message": "invalid params: limit: Input should be less than or equal to 100",
        "data": "limit",
    }


async def test_mutation_event_is_published_to_the_users_exchange(
    rpc: AmqpRpc, db: asyncpg.Connection
) -> None:
    user = fresh_id()
    await seed(db, user, 4)
    channel = await rpc.connection.channel()
    probe = await channel.declare_queue(exclusive=True)
    await probe.bind(TOPOLOGY.users_exchange, user)

    reply = await rpc.call("notifications.mark_read", {"ids": [f"{user}-2", f"{user}-3"]}, user=user)
    assert reply == {"result": {"updated": 2, "unread_count": 2, "unseen_count": 2, "last_seq": 4}}
    message = await next_message(probe, 10)
    assert message.type == "notification:read"
    assert orjson.loads(message.body) == {
        "jsonrpc": "2.0",
        "method": "notification:read",
        "params": {"ids": [f"{user}-2", f"{user}-3"], "unread_count": 2, "unseen_count": 2, "last_seq": 4},
    }


async def test_many_requests_in_flight_are_each_answered_for_their_own_user(
    rpc: AmqpRpc, db: asyncpg.Connection
) -> None:
    users = [fresh_id() for _ in range(20)]
    for index, user in enumerate(users):
        await seed(db, user, index)
    replies = await asyncio.gather(
        *(rpc.call("notifications.unread_count", user=user) for user in users for _ in range(10))
    )
    counts = [reply["result"]["count"] for reply in replies]
    assert counts == [index for index in range(20) for _ in range(10)]


async def test_answers_are_counted_in_the_worker_metrics(worker_stack: Stack, rpc: AmqpRpc) -> None:
    user = fresh_id()
    await rpc.call("notifications.list", user=user)
    await rpc.call("notifications.list", {"limit": -1}, user=user)
    await rpc.call("no.such.method", user=user)
    status, body = http_get(f"{worker_stack.processes[0].url}/metrics")
    assert status == 200
    text = body.decode()
    for sample in (
        'herald_worker_requests_total{method="notifications.list",outcome="ok"}',
        'herald_worker_requests_total{method="notifications.list",outcome="-32602"}',
        'herald_worker_requests_total{method="unknown",outcome="-32601"}',
        'herald_worker_request_seconds_count{method="notifications.list"}',
    ):
        assert sample in text, sample


async def test_counter_stays_exact_while_the_worker_stores_and_requests_mutate(
    worker_stack: Stack, rpc: AmqpRpc, db: asyncpg.Connection
) -> None:
    """The worker's inserts and the requests' mutations adjust ``unread_count`` on the same row, unharmed."""
    user = fresh_id()
    await seed(db, user, 50)
    rng = random.Random(7)
    stored = 300

    async def mutate() -> list[dict[str, Any]]:
        replies = []
        for _ in range(60):
            ids = await db.fetch(
                "SELECT id FROM notifications WHERE user_id = $1 ORDER BY random() LIMIT 10", user
            )
            method = rng.choice(
                ["notifications.mark_read", "notifications.mark_unread", "notifications.delete"] * 3
                + ["notifications.mark_all_read"]
            )
            params = {} if method.endswith("all_read") else {"ids": [row["id"] for row in ids]}
            replies.append(await rpc.call(method, params, user=user))
        return replies

    async with Producer(worker_stack.amqp_url) as producer:
        sending = asyncio.gather(*(producer.send(user, "NEW_COMMENT", f"live-{i}") for i in range(stored)))
        replies, _ = await asyncio.gather(mutate(), sending)

    assert all("result" in reply for reply in replies), [r for r in replies if "result" not in r][:3]
    await wait_until(
        lambda: _last_seq_is(db, user, 50 + stored), 60, f"all {stored} events stored for {user}"
    )
    counter, actual = await unread_truth(db, user)
    assert counter == actual


async def _last_seq_is(db: asyncpg.Connection, user: str, expected: int) -> bool:
    return bool(await db.fetchval("SELECT last_seq FROM users WHERE user_id = $1", user) == expected)
