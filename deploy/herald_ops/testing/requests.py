"""Helpers for the request tests and ``bench/requests.py``: seeding, an AMQP RPC client, a WebSocket client.

Seeding writes notifications straight into Postgres the way the worker stores them (counter row locked and
advanced in the same transaction, ``unread_count`` maintained), so tests of the request path can start
from thousands of notifications without pushing each through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import websockets

from herald_ops.testing.stack import mint, wait_until
from shared.settings import broker_user

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
    from websockets.asyncio.client import ClientConnection

# Catalog types (name, category) the seeder cycles through.
SEED_TYPES: tuple[tuple[str, str], ...] = (
    ("COURSE_NEW_CONTENT", "course"),
    ("GRADE_RELEASED", "assessment"),
    ("NEW_COMMENT", "social"),
    ("SYSTEM_ANNOUNCEMENT", "system"),
)


async def seed(conn: asyncpg.Connection, user_id: str, count: int, *, read: bool = False) -> list[int]:
    """Store ``count`` notifications for ``user_id`` (ids ``<user>-<seq>``); return their seqs.

    Types cycle through :data:`SEED_TYPES`; ``read`` stores them already read (and so seen).
    """
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING", user_id
        )
        last = await conn.fetchval(
            """UPDATE users SET last_seq = last_seq + $2, unread_count = unread_count + $3,
                               unseen_count = unseen_count + $3, inbox_count = inbox_count + $2
                WHERE user_id = $1 RETURNING last_seq""",
            user_id,
            count,
            0 if read else count,
        )
        first = last - count + 1
        names = [SEED_TYPES[i % len(SEED_TYPES)] for i in range(count)]
        await conn.execute(
            """INSERT INTO notifications (user_id, seq, id, type, category, title, message, read_at, seen_at)
               SELECT $1, s, $1 || '-' || s, t, c, 'title ' || s, 'message ' || s,
                      CASE WHEN $5 THEN now() END, CASE WHEN $5 THEN now() END
                 FROM unnest($2::bigint[], $3::text[], $4::text[]) AS x(s, t, c)""",
            user_id,
            list(range(first, last + 1)),
            [name for name, _ in names],
            [category for _, category in names],
            read,
        )
    return list(range(first, last + 1))


async def unread_truth(conn: asyncpg.Connection, user_id: str) -> tuple[int, int]:
    """(maintained counter, actual count of unread rows) for ``user_id``."""
    row = await conn.fetchrow(
        """SELECT (SELECT unread_count FROM users WHERE user_id = $1) AS counter,
                  (SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL) AS actual""",
        user_id,
    )
    assert row is not None
    return row["counter"], row["actual"]


async def visible_counts(conn: asyncpg.Connection, user_id: str) -> dict[str, int]:
    """The truth, counted row by row: ``{"unread_count", "unseen_count"}`` of the user's live
    (not expired) notifications, archived or not; and the maintained counters (the inbox's too) agree
    with all rows."""
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE read_at IS NULL AND live) AS unread_count,
                  count(*) FILTER (WHERE seen_at IS NULL AND live) AS unseen_count,
                  count(*) FILTER (WHERE read_at IS NULL) AS all_unread,
                  count(*) FILTER (WHERE seen_at IS NULL) AS all_unseen,
                  count(*) FILTER (WHERE archived_at IS NULL) AS all_inbox,
                  (SELECT unread_count FROM users WHERE user_id = $1) AS unread_counter,
                  (SELECT unseen_count FROM users WHERE user_id = $1) AS unseen_counter,
                  (SELECT inbox_count FROM users WHERE user_id = $1) AS inbox_counter
             FROM (SELECT read_at, seen_at, archived_at, expires_at IS NULL OR expires_at > now() AS live
                     FROM notifications WHERE user_id = $1) AS n""",
        user_id,
    )
    assert row is not None
    counters = (row["unread_counter"] or 0, row["unseen_counter"] or 0, row["inbox_counter"] or 0)
    assert counters == (row["all_unread"], row["all_unseen"], row["all_inbox"])
    return {"unread_count": row["unread_count"], "unseen_count": row["unseen_count"]}


async def next_message(queue: AbstractQueue, timeout: float = 30) -> AbstractIncomingMessage:
    """The next message of ``queue`` (taken without an ack), waiting for it up to ``timeout`` seconds."""
    got: list[AbstractIncomingMessage] = []

    async def arrived() -> bool:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            got.append(message)
        return bool(got)

    await wait_until(arrived, timeout, f"a message on {queue.name}")
    return got[0]


class AmqpRpc:
    """A gateway stand-in: requests to ``herald.rpc`` over direct reply-to, futures by correlation id.

    Like a gateway it sets the AMQP ``user_id`` to its connection's broker user, which the worker checks.
    """

    def __init__(
        self, connection: AbstractConnection, channel: AbstractChannel, queue_name: str, broker_user: str
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.queue_name = queue_name
        self.broker_user = broker_user
        self.pending: dict[str, asyncio.Future[bytes]] = {}

    @classmethod
    async def connect(cls, amqp_url: str, queue_name: str = "herald.rpc") -> AmqpRpc:
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        client = cls(connection, channel, queue_name, broker_user(amqp_url))
        reply_queue = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await reply_queue.consume(client._on_reply, no_ack=True)
        return client

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self.pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call_raw(self, body: bytes, timeout: float = 10) -> bytes:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                reply_to="amq.rabbitmq.reply-to",
                correlation_id=correlation_id,
                expiration=timeout,
                user_id=self.broker_user,
            ),
            routing_key=self.queue_name,
        )
        return await asyncio.wait_for(future, timeout)

    async def call(
        self, method: str, params: Any = None, *, user: str, admin: bool = False
    ) -> dict[str, Any]:
        """The parsed reply body: ``{"result": ...}`` or ``{"error": ...}``."""
        envelope = {
            "method": method,
            "params": {} if params is None else params,
            "user_id": user,
            "admin": admin,
        }
        reply: dict[str, Any] = orjson.loads(await self.call_raw(orjson.dumps(envelope)))
        return reply

    async def close(self) -> None:
        await self.connection.close()


class WsClient:
    """A real WebSocket client of the gateway: requests by id, server notifications in a queue."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, ws_url: str, user_id: str, *, admin: bool = False) -> WsClient:
        ws = await websockets.connect(f"{ws_url}?token={mint(user_id, admin=admin)}")
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = orjson.loads(raw)
                future = self.pending.pop(frame["id"], None) if "id" in frame else None
                if future is not None:
                    future.set_result(frame)
                elif "method" in frame:
                    self.events.put_nowait(frame)

    async def request(self, method: str, params: Any = None, timeout: float = 10) -> dict[str, Any]:
        """The reply frame (with ``result`` or ``error``)."""
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        frame: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        await self.ws.send(orjson.dumps(frame).decode())
        return await asyncio.wait_for(future, timeout)

    async def result(self, method: str, params: Any = None) -> Any:
        """The ``result`` of a request that must succeed."""
        reply = await self.request(method, params)
        assert "result" in reply, reply
        return reply["result"]

    async def next_event(self, method: str, timeout: float = 10) -> dict[str, Any]:
        """The params of the next server notification named ``method`` (others before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await asyncio.wait_for(self.events.get(), max(0.01, deadline - time.monotonic()))
            if frame["method"] == method:
                params: dict[str, Any] = frame["params"]
                return params

    async def next_frame(self, timeout: float = 10) -> dict[str, Any]:
        """The next server notification, whatever its method."""
        return await asyncio.wait_for(self.events.get(), timeout)

    def drain(self, methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every notification received so far (optionally only ``methods``), removing them all."""
        frames = []
        while not self.events.empty():
            frame = self.events.get_nowait()
            if methods is None or frame["method"] in methods:
                frames.append(frame)
        return frames

    async def close(self) -> None:
        await self.ws.close()
        await self.reader
