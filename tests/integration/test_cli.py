"""The ``herald`` command and the producer helper against the real broker."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aio_pika
import jwt
import orjson
import pytest

from herald_client.producer import InvalidEvent, Producer, PublishError
from herald_ops.testing.stack import TEST_JWT_SECRET
from shared.events import IdempotencyKey, parse_event
from shared.topology import Topology

if TYPE_CHECKING:
    from aio_pika.abc import AbstractQueue, AbstractRobustConnection

    from herald_ops.testing.stack import Stack

TOPOLOGY = Topology()


def herald(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herald_ops.cli", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def bind_probe(connection: AbstractRobustConnection, routing_key: str) -> AbstractQueue:
    """A private queue bound to the events exchange, standing in for the worker's input queue."""
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        TOPOLOGY.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key)
    return queue


async def sent_message(
    stack: Stack, amqp: AbstractRobustConnection, *args: str
) -> tuple[aio_pika.abc.AbstractIncomingMessage, dict[str, Any]]:
    """Run ``herald send *args``; the message it published and its body."""
    probe = await bind_probe(amqp, "notification.#")
    result = herald(stack, "send", *args)
    assert result.returncode == 0, result.stderr
    message = await probe.get(timeout=10)
    await message.ack()
    return message, orjson.loads(message.body)


def test_token_carries_sub_exp_and_roles(stack: Stack) -> None:
    result = herald(stack, "token", "--user", "alice", "--admin", "--ttl", "120")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), TEST_JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["roles"] == ["admin"]
    assert 100 <= claims["exp"] - claims["iat"] <= 120


async def test_send_publishes_a_persistent_event_keyed_by_its_id(
    stack: Stack, amqp: AbstractRobustConnection
) -> None:
    message, body = await sent_message(
        stack,
        amqp,
        *("--user", "u-cli", "--type", "GRADE_RELEASED", "--title", "Graded"),
        *("--data", '{"grade": "A"}', "--event-id", "grade-1"),
    )
    assert message.routing_key == "notification.send"
    assert message.message_id == "grade-1"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert body["user_ids"] == ["u-cli"]
    assert body["data"] == {"grade": "A"}


async def test_send_carries_url_actions_and_collapse_key(
    stack: Stack, amqp: AbstractRobustConnection
) -> None:
    _, body = await sent_message(
        stack,
        amqp,
        *("--user", "u-cli", "--type", "INSTRUCTOR_MESSAGE", "--title", "Join?"),
        *("--url", "https://lms.example/c/42", "--collapse-key", "invites"),
        *("--action", "accept=Accept=https://lms.example/c/42/accept", "--action", "decline=Decline"),
    )
    assert (body["url"], body["collapse_key"]) == ("https://lms.example/c/42", "invites")
    assert body["actions"] == [
        {"id": "accept", "label": "Accept", "url": "https://lms.example/c/42/accept"},
        {"id": "decline", "label": "Decline"},
    ]


async def test_a_source_scopes_the_event_id_and_is_checked_before_publishing(
    stack: Stack, amqp: AbstractRobustConnection
) -> None:
    _, body = await sent_message(
        stack,
        amqp,
        *("--user", "u-cli", "--type", "GRADE_RELEASED", "--title", "Graded"),
        *("--event-id", "grade-1", "--source", "gradebook"),
    )
    parsed = parse_event(orjson.dumps(body), "notification.send")
    assert parsed.idempotency_key == IdempotencyKey("gradebook", "grade-1")  # type: ignore[union-attr]
    result = herald(
        stack, "send", "--user", "u", "--type", "GRADE_RELEASED", "--title", "x", "--source", "a b"
    )
    assert result.returncode == 1
    assert "source" in result.stderr
    with pytest.raises(InvalidEvent, match="source"):
        Producer(stack.amqp_url, source="s" * 65)


def test_send_refuses_an_invalid_event_before_publishing(stack: Stack) -> None:
    result = herald(stack, "send", "--user", "bad user!", "--type", "GRADE_RELEASED", "--title", "x")
    assert result.returncode == 1
    assert "user_ids" in result.stderr


async def test_producer_reports_unroutable_events(stack: Stack) -> None:
    async with Producer(stack.amqp_url, prefix="herald_unbound") as producer:
        with pytest.raises(PublishError, match="unroutable"):
            await producer.send("u1", "GRADE_RELEASED", "Graded")


async def test_producer_validates_locally(stack: Stack) -> None:
    async with Producer(stack.amqp_url) as producer:
        with pytest.raises(InvalidEvent, match="title"):
            await producer.send("u1", "GRADE_RELEASED", "x" * 201)


async def test_producer_broadcast(stack: Stack, amqp: AbstractRobustConnection) -> None:
    probe = await bind_probe(amqp, "notification.broadcast")
    async with Producer(stack.amqp_url) as producer:
        event_id = await producer.broadcast("SYSTEM_ANNOUNCEMENT", "Maintenance", "Tonight")
    message = await probe.get(timeout=10)
    await message.ack()
    assert message.message_id == event_id
    assert orjson.loads(message.body)["title"] == "Maintenance"
