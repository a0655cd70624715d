"""``herald dlq``: a dead-lettered event goes back through a real worker exactly once after the fix.

The worker dead-letters an event of a type missing from the catalog; the operator adds the type, restarts
the worker and runs ``herald dlq replay``. The event is stored once even though the producer had sent it
twice (both copies were dead-lettered, both are replayed: the kept ``message_id``/``event_id`` makes the
second a duplicate), the replayed copies carry their original routing key and properties without the
dead-lettering headers, and dead letters that were not selected stay where they were.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import orjson

from herald_ops.dlq import DeadLetter, Selection, describe, list_dead_letters
from herald_ops.testing.stack import ROOT, queue_depth, wait_until
from shared.deadletter import replay_message
from shared.topology import ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, Topology

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack

TOPOLOGY = Topology()
NEW_TYPE = "COURSE_BETA_FEATURE"
USER = "dlq-user-1"
EVENT_ID = "dlq-event-1"


def herald_dlq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``herald dlq ARGS`` as the operator would, against ``stack``."""
    return subprocess.run(
        [sys.executable, "-m", "herald_ops.cli", "dlq", *args],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def publish_event(channel: aio_pika.abc.AbstractChannel, body: bytes, message_id: str) -> None:
    exchange = await channel.get_exchange(TOPOLOGY.events_exchange)
    await exchange.publish(
        aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            app_id="courses-service",
            headers={"x-trace": "t-1"},
        ),
        routing_key="notification.send",
    )


async def test_replay_after_fix_stores_the_event_exactly_once(fresh_stack: Stack) -> None:
    stack = fresh_stack
    worker = stack.start_worker()
    event = {
        "event_id": EVENT_ID,
        "user_id": USER,
        "type": NEW_TYPE,
        "title": "Beta feature",
        "message": "Try the new editor",
        "data": {"courseId": "42"},
    }
    connection = await aio_pika.connect(stack.amqp_url)
    pg = await asyncpg.connect(stack.database_url)
    try:
        channel = await connection.channel()
        # The producer retried: the same event twice. And one unrelated broken event.
        await publish_event(channel, orjson.dumps(event), EVENT_ID)
        await publish_event(channel, orjson.dumps(event), EVENT_ID)
        await publish_event(channel, b"{not json", "junk-1")
        await wait_until(
            lambda: queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 3, 20, "3 dead letters"
        )

        letters = await list_dead_letters(stack.amqp_url, TOPOLOGY, Selection())
        # The worker settles deliveries concurrently: dead letters need not keep the publish order.
        assert sorted(letter.message_id or "" for letter in letters) == [EVENT_ID, EVENT_ID, "junk-1"]
        assert all(letter.routing_key == "notification.send" for letter in letters)
        assert all(letter.exchange == TOPOLOGY.events_exchange for letter in letters)
        fixable = next(letter for letter in letters if letter.message_id == EVENT_ID)
        assert NEW_TYPE in fixable.reason
        assert EVENT_ID in fixable.preview()
        # Listing changes nothing, and keeps the order.
        assert await list_dead_letters(stack.amqp_url, TOPOLOGY, Selection()) == letters

        listed = herald_dlq(stack, "list")
        assert listed.returncode == 0, listed.stderr
        assert "3 dead letter(s) shown" in listed.stdout
        assert NEW_TYPE in listed.stdout

        # The fix: the type joins the catalog, the worker restarts with it.
        await pg.execute(
            """INSERT INTO notification_types (name, category, default_in_app, default_email, default_push)
               VALUES ($1, 'course', true, false, false)""",
            NEW_TYPE,
        )
        worker.stop()
        worker.launch()

        # A spy bound like the worker's queue sees exactly what the replay publishes.
        spy = await channel.declare_queue("", exclusive=True)
        await spy.bind(TOPOLOGY.events_exchange, routing_key="notification.#")

        replayed = herald_dlq(stack, "replay", "--message-id", EVENT_ID)
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed 2 event(s) to {TOPOLOGY.events_exchange}" in replayed.stdout

        async def stored() -> int:
            count: int = await pg.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", USER)
            return count

        await wait_until(
            lambda: queue_depth(stack.name, TOPOLOGY.events_queue) == 0, 20, "events queue drained"
        )
        await wait_until(lambda: stored(), 20, "the replayed notification stored")
        assert await stored() == 1
        row = await pg.fetchrow("SELECT type, title, data FROM notifications WHERE user_id = $1", USER)
        assert (row["type"], row["title"]) == (NEW_TYPE, "Beta feature")
        assert orjson.loads(row["data"]) == {"courseId": "42"}
        unread = await pg.fetchval("SELECT unread_count FROM users WHERE user_id = $1", USER)
        assert unread == 1

        copies = [await spy.get(timeout=5) for _ in range(2)]
        for copy in copies:
            await copy.ack()
            assert copy.routing_key == "notification.send"
            assert copy.message_id == EVENT_ID
            assert copy.app_id == "courses-service"
            assert copy.content_type == "application/json"
            assert copy.headers == {"x-trace": "t-1"}
            assert orjson.loads(copy.body) == event
        assert await spy.get(fail=False) is None

        # The broken event was not selected: still there, alone.
        remaining = await list_dead_letters(stack.amqp_url, TOPOLOGY, Selection())
        assert [letter.message_id for letter in remaining] == ["junk-1"]
        assert await stored() == 1
    finally:
        await pg.close()
        await connection.close()


async def test_purge_needs_yes_and_honours_filters(fresh_stack: Stack) -> None:
    stack = fresh_stack
    stack.start_worker()
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        channel = await connection.channel()
        for n in range(3):
            await publish_event(channel, b"[]", f"bad-{n}")
        await wait_until(
            lambda: queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 3, 20, "3 dead letters"
        )

        refused = herald_dlq(stack, "purge")
        assert refused.returncode == 1
        assert "would purge 3" in refused.stderr
        assert queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 3

        one = herald_dlq(stack, "purge", "--yes", "--message-id", "bad-1")
        assert one.returncode == 0, one.stderr
        assert "purged 1" in one.stdout
        left = await list_dead_letters(stack.amqp_url, TOPOLOGY, Selection())
        assert sorted(letter.message_id or "" for letter in left) == ["bad-0", "bad-2"]

        limited = await list_dead_letters(stack.amqp_url, TOPOLOGY, Selection(limit=1))
        assert limited == left[:1]

        everything = herald_dlq(stack, "purge", "--yes")
        assert everything.returncode == 0, everything.stderr
        assert "purged 2" in everything.stdout
        assert queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 0
    finally:
        await connection.close()


@dataclass
class _Delivered:
    """The attributes of an incoming message that :func:`describe` and :func:`replay_message` read."""

    body: bytes
    headers: dict[str, Any]
    routing_key: str = "herald.dlx-key"
    message_id: str | None = "m-1"
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    delivery_mode: int = 2
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    timestamp: Any = None
    type: str | None = None
    app_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_broker_dead_letters_are_described_from_x_death() -> None:
    """Events the queue dead-lettered after x-delivery-limit carry x-death instead of Herald's headers."""
    message = _Delivered(
        b'{"user_id": "u1"}',
        {
            "x-death": [
                {
                    "reason": "delivery_limit",
                    "queue": "herald.events",
                    "exchange": "",
                    "routing-keys": ["herald.events"],
                    "count": 1,
                }
            ],
            "x-first-death-reason": "delivery_limit",
            "x-delivery-count": 20,
            "x-trace": "t-9",
        },
    )
    letter = describe(message, 4, TOPOLOGY)  # type: ignore[arg-type]
    assert letter == DeadLetter(4, "broker: delivery_limit", "", "herald.events", "m-1", message.body)
    again = replay_message(message)  # type: ignore[arg-type]
    assert again.headers == {"x-trace": "t-9"}
    assert again.message_id == "m-1"


def test_worker_dead_letters_are_described_from_herald_headers() -> None:
    message = _Delivered(
        b"x" * 500,
        {
            ERROR_HEADER: b"type: unknown notification type 'X'",
            ORIGINAL_ROUTING_KEY_HEADER: "notification.broadcast",
            ORIGINAL_EXCHANGE_HEADER: "herald.events",
        },
    )
    letter = describe(message, 1, TOPOLOGY)  # type: ignore[arg-type]
    assert letter.reason == "type: unknown notification type 'X'"
    assert letter.routing_key == "notification.broadcast"
    assert letter.exchange == "herald.events"
    assert len(letter.preview()) == 160
    assert replay_message(message).headers == {}  # type: ignore[arg-type]
    assert Selection(reason="UNKNOWN").matches(letter)
    assert not Selection(routing_key="notification.send").matches(letter)


async def test_replay_of_an_event_published_to_the_queue_directly(fresh_stack: Stack) -> None:
    """NestJS producers with ``noAssert`` publish through the default exchange to the queue itself; the
    replay goes back the same way (the events exchange has no binding for the queue's name)."""
    stack = fresh_stack
    worker = stack.start_worker()
    event = {"eventId": "nest-1", "userId": "nest-user", "type": NEW_TYPE, "title": "From Nest"}
    connection = await aio_pika.connect(stack.amqp_url)
    pg = await asyncpg.connect(stack.database_url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(orjson.dumps({"pattern": "notification.send", "data": event})),
            routing_key=TOPOLOGY.events_queue,
        )
        await wait_until(lambda: queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 1, 20, "dead letter")
        (letter,) = await list_dead_letters(stack.amqp_url, TOPOLOGY, Selection())
        assert (letter.exchange, letter.routing_key) == ("", TOPOLOGY.events_queue)

        await pg.execute("INSERT INTO notification_types (name, category) VALUES ($1, 'course')", NEW_TYPE)
        worker.stop()
        worker.launch()
        replayed = herald_dlq(stack, "replay")
        assert replayed.returncode == 0, replayed.stderr

        async def stored() -> int:
            count: int = await pg.fetchval("SELECT count(*) FROM notifications WHERE user_id = 'nest-user'")
            return count

        await wait_until(stored, 20, "the replayed Nest event stored")
        await wait_until(
            lambda: queue_depth(stack.name, TOPOLOGY.events_queue) == 0, 20, "events queue drained"
        )
        assert await stored() == 1
        assert queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 0
    finally:
        await pg.close()
        await connection.close()


async def test_a_forged_dead_letter_is_never_replayed_onto_the_rpc_queue(fresh_stack: Stack) -> None:
    """A producer cannot aim ``herald dlq replay`` at ``herald.rpc``: whatever the headers claim, a
    replay goes only to Herald's input (the events exchange with a ``notification.*`` / ``user.*`` key,
    or the events queue through the default exchange). The forged letter stays in the dead-letter queue."""
    stack = fresh_stack
    stack.start_worker()  # declares the topology, then goes away so nothing consumes herald.rpc
    stack.stop_all()
    forged_request = {
        "method": "notifications.broadcast",
        "params": {"type": "SYSTEM_ANNOUNCEMENT", "title": "pwned"},
        "user_id": "attacker",
        "admin": True,
    }
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        channel = await connection.channel()
        dlx = await channel.get_exchange(TOPOLOGY.dead_letter_exchange)
        forged_headers: list[dict[str, Any]] = [
            {ERROR_HEADER: "forged", ORIGINAL_EXCHANGE_HEADER: "", ORIGINAL_ROUTING_KEY_HEADER: "herald.rpc"},
            {
                "x-death": [
                    {
                        "reason": "expired",
                        "queue": TOPOLOGY.events_queue,
                        "exchange": "",
                        "count": 1,
                        "routing-keys": [TOPOLOGY.rpc_queue],
                    }
                ],
                ORIGINAL_EXCHANGE_HEADER: "",
                ORIGINAL_ROUTING_KEY_HEADER: TOPOLOGY.rpc_queue,
            },
        ]
        for n, headers in enumerate(forged_headers):
            await dlx.publish(
                aio_pika.Message(orjson.dumps(forged_request), headers=headers, message_id=f"forged-{n}"),
                routing_key="notification.send",
            )
        await wait_until(
            lambda: queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 2, 20, "2 dead letters"
        )
        replayed = herald_dlq(stack, "replay")
        assert "not replayed" in replayed.stdout + replayed.stderr
        assert queue_depth(stack.name, TOPOLOGY.rpc_queue) == 0
        assert queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 2
    finally:
        await connection.close()


async def test_a_replay_the_broker_cannot_route_keeps_its_dead_letter(fresh_stack: Stack) -> None:
    """With the input queue gone (a broker rebuilt before any worker started), the republished event is
    returned unroutable: the replay fails, naming it, and the dead letter stays."""
    stack = fresh_stack
    worker = stack.start_worker()
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        channel = await connection.channel()
        await publish_event(
            channel, orjson.dumps({"user_id": "lost-user", "type": NEW_TYPE, "title": "t"}), "unroutable-1"
        )
        await wait_until(lambda: queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 1, 20, "dead letter")
        worker.stop()
        await channel.queue_delete(TOPOLOGY.events_queue)
        replayed = herald_dlq(stack, "replay")
        assert replayed.returncode != 0
        assert "unroutable" in replayed.stderr
        assert queue_depth(stack.name, TOPOLOGY.dead_letter_queue) == 1
    finally:
        await connection.close()
