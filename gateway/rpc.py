"""Gateway → worker requests over RabbitMQ direct reply-to (``amq.rabbitmq.reply-to``).

One consumer (no-ack, as RabbitMQ requires for direct reply-to) on the channel the requests are published
on; a dict of futures keyed by ``correlation_id``; as many requests in flight as callers make. FastStream's
``broker.request`` serializes requests behind a lock, which is why this small client exists.

The client lives as long as the process; :meth:`RpcClient.attach` binds it to a fresh channel after every
(re)connect and :meth:`RpcClient.detach` fails everything pending with :class:`RpcUnavailable`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Final

import aio_pika

from gateway.errors import RpcTimeout, RpcUnavailable

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

REPLY_TO: Final = "amq.rabbitmq.reply-to"


class RpcClient:
    """Request/reply with the worker; see the module docstring."""

    def __init__(self, queue: str, timeout: float, broker_user: str) -> None:
        self._queue = queue
        self._timeout = timeout
        # Set as the AMQP user_id of every request: the broker refuses any other value than the
        # connection's user, so the worker can trust it names the publisher (a gateway).
        self._broker_user = broker_user
        self._channel: AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def attach(self, channel: AbstractChannel) -> None:
        """Start consuming replies on ``channel``; requests are published on it from now on."""
        reply_queue = await channel.get_queue(REPLY_TO, ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)
        self._channel = channel

    def detach(self) -> None:
        """The channel is gone: fail every pending request with :class:`RpcUnavailable`."""
        self._channel = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(RpcUnavailable("broker connection lost"))

    async def call(self, body: bytes) -> bytes:
        """Publish ``body`` to the RPC queue and return the reply body.

        Raises:
            RpcUnavailable: no broker connection, or it was lost while waiting.
            RpcTimeout: no reply within the timeout (the request also expires in the queue by then).
        """
        channel = self._channel
        if channel is None or channel.is_closed:
            raise RpcUnavailable("broker connection down")
        correlation_id = f"{next(self._ids):x}"
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            message = aio_pika.Message(
                body,
                content_type="application/json",
                correlation_id=correlation_id,
                reply_to=REPLY_TO,
                expiration=self._timeout,
                user_id=self._broker_user,
            )
            try:
                await channel.default_exchange.publish(message, routing_key=self._queue, mandatory=False)
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                raise RpcUnavailable(f"publish failed: {exc}") from None
            try:
                async with asyncio.timeout(self._timeout):
                    return await future
            except TimeoutError:
                raise RpcTimeout(f"no reply within {self._timeout}s") from None
        finally:
            self._pending.pop(correlation_id, None)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)
