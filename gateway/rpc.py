"""Gateway → worker requests over RabbitMQ direct reply-to (``amq.rabbitmq.reply-to``).

One consumer (no-ack, as RabbitMQ requires for direct reply-to) on the channel the requests are published
on; a dict of futures keyed by ``correlation_id``; as many requests in flight as callers make. FastStream's
``broker.request`` serializes requests behind a lock, which is why this small client exists.

The client lives as long as the process; :meth:`RpcClient.attach` binds it to a fresh channel after every
(re)connect and :meth:`RpcClient.detach` fails everything pending with :class:`RpcUnavailable`. The
WebSocket gateway attaches it from its :class:`gateway.broker.BrokerLink`; the HTTP API, which needs
nothing else from the broker, from an :class:`RpcLink`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Final, cast

import aio_pika
import aiormq

from gateway.errors import RpcTimeout, RpcUnavailable
from gateway.link import SupervisedLink

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection
    from aiormq.abc import DeliveredMessage

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
        self._underlay: aiormq.Channel | None = None
        # AMQP wants the per-message TTL as a string of milliseconds.
        self._expiration = str(int(timeout * 1000))
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def timeout(self) -> float:
        """Seconds a request waits for its reply (``HERALD_RPC_TIMEOUT``)."""
        return self._timeout

    async def attach(self, channel: AbstractChannel) -> None:
        """Start consuming replies on ``channel``; requests are published on it from now on.

        Both go through the underlying aiormq channel: aio-pika's ``Exchange.publish`` holds the channel
        lock until each frame is flushed (one request on the wire at a time), and its consumer builds an
        ``IncomingMessage`` and a task per reply; the client needs neither.
        """
        # The concrete aiormq channel: its basic_publish takes wait=False, the abstract one does not say so.
        underlay = cast("aiormq.Channel", await channel.get_underlay_channel())
        await underlay.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
        self._channel = channel
        self._underlay = underlay

    def detach(self) -> None:
        """The channel is gone: fail every pending request with :class:`RpcUnavailable`."""
        self._channel = None
        self._underlay = None
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
        channel, underlay = self._channel, self._underlay
        if channel is None or underlay is None or channel.is_closed:
            raise RpcUnavailable("broker connection down")
        correlation_id = f"{next(self._ids):x}"
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            properties = aiormq.spec.Basic.Properties(
                content_type="application/json",
                correlation_id=correlation_id,
                reply_to=REPLY_TO,
                expiration=self._expiration,
                user_id=self._broker_user,
            )
            try:
                await underlay.basic_publish(
                    body, routing_key=self._queue, properties=properties, mandatory=False, wait=False
                )
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                raise RpcUnavailable(f"publish failed: {exc}") from None
            try:
                async with asyncio.timeout(self._timeout):
                    return await future
            except TimeoutError:
                raise RpcTimeout(f"no reply within {self._timeout}s") from None
        finally:
            self._pending.pop(correlation_id, None)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        future = self._pending.pop(message.header.properties.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)


class RpcLink(SupervisedLink):
    """A supervised connection whose only job is carrying an :class:`RpcClient`'s requests."""

    def __init__(self, amqp_url: str, rpc: RpcClient, connection_name: str) -> None:
        super().__init__(amqp_url, connection_name)
        self._rpc = rpc

    async def _open(self, connection: AbstractConnection, lost: asyncio.Event) -> None:
        channel = await connection.channel(publisher_confirms=False)
        self._watch(channel, lost)
        await self._rpc.attach(channel)

    def _on_down(self) -> None:
        self._rpc.detach()
