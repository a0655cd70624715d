"""Helpers for the worker tests: publish events, watch the queues the worker publishes to, read the store."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import orjson
from aiormq import spec
from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader

from herald_ops.testing.stack import fresh_id, wait_until
from shared.topology import Topology

if TYPE_CHECKING:
    import asyncpg
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

    from herald_ops.testing.stack import HeraldProcess

TOPOLOGY = Topology()
_counter = itertools.count()


def event(user: str | list[str], type_: str = "NEW_COMMENT", **fields: Any) -> dict[str, Any]:
    """A valid send event for ``user`` (or several) with a fresh ``event_id`` unless given."""
    body: dict[str, Any] = {
        "event_id": fresh_id("ev"),
        "type": type_,
        "title": f"Title {next(_counter)}",
        "message": "Body",
        "data": {"k": "v"},
    }
    body.update({"user_ids": user} if isinstance(user, list) else {"user_id": user})
    body.update(fields)
    return body


class Watcher:
    """An AMQP channel for a test: publishes events and drains queues bound to the worker's outputs."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._dead: dict[str | None, AbstractIncomingMessage] = {}

    async def publish(
        self,
        body: dict[str, Any] | bytes,
        routing_key: str = "notification.send",
        message_id: str | None = None,
    ) -> None:
        """Publish one persistent event to ``herald.events`` (confirmed)."""
        exchange = await self.channel.get_exchange(TOPOLOGY.events_exchange)
        await exchange.publish(
            aio_pika.Message(
                body if isinstance(body, bytes) else orjson.dumps(body),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
            ),
            routing_key=routing_key,
        )

    async def bound_queue(self, exchange: str, *keys: str) -> AbstractQueue:
        """An exclusive queue bound to ``exchange`` with each of ``keys`` (or ``""``)."""
        queue = await self.channel.declare_queue(exclusive=True)
        for key in keys or ("",):
            await queue.bind(exchange, routing_key=key)
        return queue

    async def frames(self, *users: str) -> AbstractQueue:
        """A queue receiving the live frames of ``users`` from ``herald.users``."""
        return await self.bound_queue(TOPOLOGY.users_exchange, *users)

    async def take(
        self, queue: AbstractQueue, count: int, timeout: float = 20.0
    ) -> list[AbstractIncomingMessage]:
        """Wait until ``count`` messages arrived on ``queue`` and return them (acked), in order."""
        got: list[AbstractIncomingMessage] = []

        async def enough() -> bool:
            while len(got) < count:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    return False
                got.append(message)
            return True

        await wait_until(enough, timeout, f"{count} messages on {queue.name} (got {len(got)})")
        return got

    async def nothing_more(self, queue: AbstractQueue) -> list[AbstractIncomingMessage]:
        """Whatever else is on ``queue`` right now (call after a later marker event was seen)."""
        rest = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            rest.append(message)
        return rest

    async def dead_letters(
        self, message_ids: set[str], timeout: float = 20.0
    ) -> dict[str, AbstractIncomingMessage]:
        """Wait for the dead letters carrying ``message_ids``; every dead letter read is kept by id."""
        queue = await self.channel.declare_queue(TOPOLOGY.dead_letter_queue, passive=True)

        async def all_found() -> bool:
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                self._dead[message.message_id] = message
            return message_ids <= set(self._dead)

        await wait_until(all_found, timeout, f"dead letters {sorted(message_ids - set(self._dead))}")
        return {mid: self._dead[mid] for mid in message_ids}

    async def dead_letter_count(self) -> int:
        """Messages waiting in ``herald.events.dead`` now."""
        queue = await self.channel.declare_queue(TOPOLOGY.dead_letter_queue, passive=True)
        count: int = queue.declaration_result.message_count or 0
        return count


def frame_params(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The params of a ``notification:new`` frame, checking the frame's envelope and AMQP type."""
    frame = orjson.loads(message.body)
    assert frame["jsonrpc"] == "2.0"
    assert frame["method"] == message.type == "notification:new"
    assert message.content_type == "application/json"
    params: dict[str, Any] = frame["params"]
    return params


async def rows(pg: asyncpg.Connection, user: str) -> list[asyncpg.Record]:
    """A user's stored notifications in seq order."""
    return list(await pg.fetch("SELECT * FROM notifications WHERE user_id = $1 ORDER BY seq", user))


async def counters(pg: asyncpg.Connection, user: str) -> tuple[int, int] | None:
    """``(last_seq, unread_count)`` of a user, or ``None`` when unknown."""
    row = await pg.fetchrow("SELECT last_seq, unread_count FROM users WHERE user_id = $1", user)
    return None if row is None else (row["last_seq"], row["unread_count"])


async def recorded_jobs(pg: asyncpg.Connection, users: list[str], count: int) -> list[dict[str, Any]]:
    """Wait until the email/push jobs of ``users`` in ``delivery_jobs`` number ``count``; return their rows
    oldest first, the notification decoded (``None`` for a job that keeps no copy: its in-app row is it)."""
    query = "SELECT * FROM delivery_jobs WHERE user_id = ANY($1) ORDER BY created_at, id"

    async def enough() -> bool:
        return len(await pg.fetch(query, users)) >= count

    await wait_until(enough, 20, f"{count} email/push jobs of {users} recorded")
    return [
        {**dict(row), "notification": row["notification"] and orjson.loads(row["notification"])}
        for row in await pg.fetch(query, users)
    ]


async def add_known_users(pg: asyncpg.Connection, last_seqs: dict[str, int]) -> None:
    """Make each user known with ``last_seq`` (and no rows yet): a user base for broadcasts."""
    await pg.execute(
        "INSERT INTO users (user_id, last_seq) SELECT * FROM unnest($1::text[], $2::bigint[])",
        list(last_seqs),
        list(last_seqs.values()),
    )


async def redeliver_while_down(
    worker: HeraldProcess, connection: aio_pika.abc.AbstractConnection, watcher: Watcher, body: dict[str, Any]
) -> None:
    """Publish ``body`` while ``worker`` is stopped, take it from ``herald.events`` without an ack (a
    consumer that died before acking), then start the worker again: RabbitMQ redelivers it."""
    worker.stop()
    await watcher.publish(body)
    grabber = await connection.channel()
    grabbed = await (await grabber.declare_queue(TOPOLOGY.events_queue, passive=True)).get()
    assert grabbed.body == orjson.dumps(body)
    await grabber.close()  # unacked: requeued as redelivered
    worker.launch()


class FakeChannel:
    """Records what an :class:`worker.acks.AckTracker` sends: enough of an aiormq channel for it."""

    is_closed = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.calls.append(("nack", tag, requeue))


def delivered(
    channel: FakeChannel, tag: int, body: dict[str, Any], routing_key: str = "notification.send"
) -> DeliveredMessage:
    """What aiormq hands the worker's event consumer for one delivery of ``body``."""
    return DeliveredMessage(
        delivery=spec.Basic.Deliver(delivery_tag=tag, exchange="herald.events", routing_key=routing_key),
        header=ContentHeader(properties=spec.Basic.Properties()),
        body=orjson.dumps(body),
        channel=cast("Any", channel),
    )
