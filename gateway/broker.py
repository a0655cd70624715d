"""The gateway's AMQP link: connection supervision, its queue, per-user topology, frame intake.

Per process: one exclusive, server-named queue bound to ``herald.broadcast`` and to ``herald.user.<id>``
of every locally connected user. Attaching a user (PROTOCOL §3): declare ``herald.user.<id>`` (fanout,
auto-delete, non-durable), bind the queue to it, then bind it to ``herald.users`` with key ``<id>`` — in
that order, so the exchange always has a queue bound before it can receive anything and deletes itself
when the last gateway unbinds. Detaching = unbinding the queue.

Topology runs on its own channel. Another gateway's unbind can delete a user's exchange between this
gateway's declare and bind; the broker answers 404 and closes the channel, so the channel is reopened and
the attach retried from the declare.

The connection is a plain (non-robust) aio-pika connection supervised here rather than by aio-pika's
robust reconnect: a robust connection would re-declare every per-user exchange it ever saw, including
users long gone, and its server-named queue would come back under a new name without the bindings. After
each (re)connect this module re-creates its channels, queue and consumers, bumps :attr:`generation`, and
asks the hub to re-attach the users still connected here (and only those) and send them
``sync:required``: frames published during the gap are lost, since live frames are not persisted.

Frames are consumed without acks: the queue is exclusive and frames are best-effort by design (Postgres
is the record; clients catch up with ``notifications.sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

import aio_pika
import aiormq
import structlog

from gateway.errors import TopologyError

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

    from gateway.hub import Hub
    from gateway.metrics import Metrics
    from gateway.rpc import RpcClient
    from shared.topology import Topology

log = structlog.get_logger("gateway.broker")

TYPE_HEADER: Final = "x-herald-type"
#: Optional broadcast header: the type is critical, relay it whatever the user's in-app switches.
CRITICAL_HEADER: Final = "x-herald-critical"
ATTACH_ATTEMPTS: Final = 8
RECONNECT_DELAYS: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
CONNECT_TIMEOUT: Final = 10.0

#: A channel-level failure that closed the topology channel; retrying on a new channel can succeed.
_CHANNEL_FAILURES: Final = (aiormq.exceptions.ChannelClosed, aiormq.exceptions.ChannelInvalidStateError)


class BrokerLink:
    """See the module docstring. ``run()`` supervises until ``close()``."""

    def __init__(
        self, amqp_url: str, names: Topology, rpc: RpcClient, metrics: Metrics, connection_name: str
    ) -> None:
        self._url = amqp_url
        self._connection_name = connection_name
        self._names = names
        self._rpc = rpc
        self._metrics = metrics
        self._hub: Hub | None = None
        self._connection: AbstractConnection | None = None
        self._topology_channel: AbstractChannel | None = None
        self._channel_lock = asyncio.Lock()
        self._queue_name = ""
        self._generation = 0
        self._ready = False
        self._closing = False
        self._lost = asyncio.Event()

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def ready(self) -> bool:
        return self._ready

    def bind_hub(self, hub: Hub) -> None:
        """The hub frames are relayed to and users are rebuilt from (set once, before :meth:`run`)."""
        self._hub = hub

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff whenever the connection is lost, until closed."""
        failures = 0
        while not self._closing:
            try:
                connection = await aio_pika.connect(
                    self._url,
                    timeout=CONNECT_TIMEOUT,
                    client_properties={"connection_name": self._connection_name},
                )
            except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("broker connect failed", error=str(exc) or type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                continue
            self._lost.clear()
            connection.close_callbacks.add(lambda *_: self._lost.set())
            try:
                await self._open(connection)
            except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError) as exc:
                log.error("broker set-up failed", error=str(exc))
                await self._drop(connection)
                await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1
                continue
            failures = 0
            log.info("broker link up", queue=self._queue_name, generation=self._generation)
            if self._hub is not None:
                await self._hub.rebuild()
            await self._lost.wait()
            if not self._closing:
                log.warning("broker link lost; reconnecting")
            await self._drop(connection)

    async def close(self) -> None:
        """Stop supervising and close the connection (the exclusive queue and its bindings go with it)."""
        self._closing = True
        self._lost.set()
        if self._connection is not None:
            await self._drop(self._connection)

    async def _open(self, connection: AbstractConnection) -> None:
        self._connection = connection
        consume_channel = await connection.channel(publisher_confirms=False)
        self._topology_channel = await connection.channel(publisher_confirms=False)
        rpc_channel = await connection.channel(publisher_confirms=False)
        names = self._names
        await self._topology_channel.declare_exchange(
            names.users_exchange, aio_pika.ExchangeType.DIRECT, durable=True, auto_delete=False
        )
        broadcast = await self._topology_channel.declare_exchange(
            names.broadcast_exchange, aio_pika.ExchangeType.FANOUT, durable=True, auto_delete=False
        )
        queue: AbstractQueue = await consume_channel.declare_queue("", exclusive=True, durable=False)
        await queue.bind(broadcast)
        await queue.consume(self._on_frame, no_ack=True)
        await self._rpc.attach(rpc_channel)
        self._queue_name = queue.name
        self._generation += 1
        self._ready = True

    async def _drop(self, connection: AbstractConnection) -> None:
        self._ready = False
        self._rpc.detach()
        self._connection = None
        self._topology_channel = None
        with contextlib.suppress(Exception):
            await connection.close()

    async def _channel(self) -> AbstractChannel:
        """The topology channel, reopened when a 404 (or anything else) closed it."""
        async with self._channel_lock:
            channel = self._topology_channel
            if channel is None or channel.is_closed:
                if self._connection is None or self._connection.is_closed:
                    raise TopologyError("broker connection down")
                channel = self._topology_channel = await self._connection.channel(publisher_confirms=False)
            return channel

    async def attach(self, user_id: str) -> None:
        """Declare ``herald.user.<id>``, bind the queue to it, bind it to ``herald.users``; retry on 404.

        Raises:
            TopologyError: the link is down, or every attempt failed.
        """
        exchange_name = self._names.user_exchange(user_id)
        for attempt in range(ATTACH_ATTEMPTS):
            channel = await self._channel()
            try:
                exchange = await channel.declare_exchange(
                    exchange_name, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=True
                )
                queue = await channel.get_queue(self._queue_name, ensure=False)
                await queue.bind(exchange)
                await exchange.bind(self._names.users_exchange, routing_key=user_id)
                return
            except _CHANNEL_FAILURES as exc:
                self._metrics.topology_retries.inc()
                log.debug("attach retried", user_id=user_id, attempt=attempt, error=str(exc))
                await asyncio.sleep(0.01 * attempt)
        raise TopologyError(f"attaching {user_id} failed {ATTACH_ATTEMPTS} times")

    async def detach(self, user_id: str, generation: int) -> None:
        """Unbind the queue from the user's exchange (which then deletes itself unless another gateway's
        queue is bound). A no-op when that binding died with an earlier connection."""
        if generation != self._generation or not self._ready:
            return
        channel = await self._channel()
        queue = await channel.get_queue(self._queue_name, ensure=False)
        try:
            await queue.unbind(self._names.user_exchange(user_id))
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass  # the exchange is already gone, and the binding with it
        except _CHANNEL_FAILURES as exc:
            raise TopologyError(f"detaching {user_id}: {exc}") from None

    async def _on_frame(self, message: AbstractIncomingMessage) -> None:
        hub = self._hub
        if hub is None:
            return
        if message.exchange == self._names.broadcast_exchange:
            headers = message.headers
            notification_type = headers.get(TYPE_HEADER)
            hub.relay_broadcast(
                message.body,
                notification_type if isinstance(notification_type, str) else None,
                bool(headers.get(CRITICAL_HEADER)),
            )
        else:
            hub.relay_user(message.routing_key or "", message.body, message.type)
