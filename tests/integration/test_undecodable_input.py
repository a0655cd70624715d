"""Messages from other services that Herald cannot read are dead-lettered with a reason, and nothing else
stops: AMQP properties that are not valid UTF-8 (which closed the consumer's whole connection, every
consumer on it, again at each redelivery) and delivery jobs with values Postgres refuses (left unacked,
they held the channel's prefetch slots)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
import orjson
import pamqp.encode
import pytest

from herald_ops.testing.delivery import user_with_email
from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from herald_ops.testing.worker import TOPOLOGY, Watcher, event
from worker.frames import UNDECODABLE_REASON

if TYPE_CHECKING:
    import struct
    from collections.abc import Iterator

    import asyncpg
    from aio_pika.abc import AbstractChannel

    from herald_ops.testing.delivery import Mailbox
    from herald_ops.testing.requests import AmqpRpc
    from herald_ops.testing.stack import Stack

pytestmark = pytest.mark.timeout(180)
NOT_UTF8 = b"\xff\xfe-not-utf-8"


@pytest.fixture(scope="module")
def stack(mailbox: Mailbox) -> Iterator[Stack]:
    with stack_context() as stack:
        stack.start_worker()
        stack.start_delivery(smtp_url=mailbox.url, delivery_poll_seconds=0.2)
        yield stack


async def publish_not_utf8(channel: AbstractChannel, exchange: str, routing_key: str, body: bytes) -> None:
    """Publish ``body`` with a message id that is not UTF-8, as a client in another language may (the
    protocol's short string is bytes, and RabbitMQ relays it unchecked). pamqp encodes only ``str``, so
    its encoder takes bytes as they are for this one publish."""
    strict = pamqp.encode._string

    def raw(encoder: struct.Struct, value: Any) -> bytes:
        return encoder.pack(len(value)) + value if isinstance(value, bytes) else strict(encoder, value)

    pamqp.encode._string = raw
    try:
        underlay = await channel.get_underlay_channel()
        properties = aiormq.spec.Basic.Properties(message_id=NOT_UTF8)  # type: ignore[arg-type]
        await underlay.basic_publish(body, exchange=exchange, routing_key=routing_key, properties=properties)
    finally:
        pamqp.encode._string = strict


async def dead_letter_reasons(channel: AbstractChannel, queue_name: str, *markers: str) -> dict[str, str]:
    """The ``x-herald-error`` of the dead letter in ``queue_name`` whose body holds each of ``markers``."""
    queue = await channel.get_queue(queue_name, ensure=False)
    reasons: dict[str, str] = {}

    async def found() -> bool:
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            for marker in markers:
                if marker.encode() in message.body:
                    reasons[marker] = str((message.headers or {}).get("x-herald-error"))
        return set(reasons) == set(markers)

    await wait_until(found, 30, f"dead letters with {markers} in {queue_name}")
    return reasons


async def test_an_event_whose_message_id_is_not_utf8_is_dead_lettered_and_the_worker_goes_on(
    watcher: Watcher, pg: asyncpg.Connection, rpc: AmqpRpc
) -> None:
    bad, good = fresh_id(), fresh_id()
    await publish_not_utf8(
        watcher.channel, TOPOLOGY.events_exchange, "notification.send", orjson.dumps(event(bad))
    )
    await watcher.publish(event(good))

    async def stored() -> bool:
        return bool(await pg.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", good))

    await wait_until(stored, 30, "the next event stored")
    reasons = await dead_letter_reasons(watcher.channel, TOPOLOGY.dead_letter_queue, bad)
    assert reasons == {bad: UNDECODABLE_REASON}
    assert "result" in await rpc.call("notifications.unread_count", user=good)
    assert await pg.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", bad) == 0


def job(user: str, title: str, **fields: Any) -> dict[str, Any]:
    """A job message of another service on ``herald.deliveries`` (an email, sent at once)."""
    return {
        "notification": {
            "id": fresh_id("n"),
            "type": "INSTRUCTOR_MESSAGE",
            "category": "social",
            "title": title,
            "message": "Body",
            "data": {},
            "created_at": datetime.now(UTC).isoformat(),
        },
        "user_id": user,
        "channel": "email",
        **fields,
    }


async def test_delivery_dead_letters_jobs_it_cannot_record_and_records_the_next(
    watcher: Watcher, pg: asyncpg.Connection, mailbox: Mailbox
) -> None:
    user, address = await user_with_email(watcher, pg)
    exchange = await watcher.channel.get_exchange(TOPOLOGY.deliveries_exchange)
    await publish_not_utf8(
        watcher.channel, TOPOLOGY.deliveries_exchange, "email", orjson.dumps(job(user, "undecodable"))
    )
    refused = {
        "undecodable": UNDECODABLE_REASON,
        "nul": "store: CharacterNotInRepertoireError",
        "version": "store: DataError",
    }
    # A NUL in the job key (a user id with one is refused before the store: not the event pattern).
    for body in (
        job(user, "nul", job_key="k\u0000nul", version=1),
        job(user, "version", job_key=fresh_id("k"), version=2**40),
    ):
        await exchange.publish(aio_pika.Message(orjson.dumps(body)), routing_key="email")
    await exchange.publish(aio_pika.Message(orjson.dumps(job(user, "after them"))), routing_key="email")

    await wait_until(lambda: mailbox.count(address) == 1, 30, "the job after the refused ones sent")
    assert mailbox.to(address)[0]["Subject"] == "after them"
    reasons = await dead_letter_reasons(watcher.channel, TOPOLOGY.deliveries_dead_queue, *refused)
    for marker, reason in refused.items():
        assert reasons[marker].startswith(reason), (marker, reasons[marker])
