"""The gateway's AMQP link: connection supervision, its queue, per-user topology, frame intake.

Per process: one exclusive, server-named queue bound to ``herald.broadcast`` and to ``herald.user.<id>``
of every locally connected user. Attaching a user (PROTOCOL §3): declare ``herald.user.<id>`` (fanout,
auto-delete, non-durable), bind the queue to it, then bind it to ``herald.users`` with key ``<id>`` — in
that order, so the exchange always has a queue bound before it can receive anything and deletes itself
when the last gateway unbinds. Detaching = unbinding the queue.

Topology runs on its own channels, never the consuming or RPC ones: a small pool of
:data:`TOPOLOGY_CHANNELS`, a user always on the same one, each running one operation (attach or detach,
several AMQP calls) at a time. Another gateway's unbind can delete a user's exchange between this
gateway's declare and bind; the broker answers 404 and closes the channel, so the channel is reopened and
the attach retried from the declare. Because an operation has its channel to itself, a 404 (or a channel
closing under it) always belongs to that operation — never to another user's detach queued behind it,
which would otherwise fail and leave a stray binding.

The connection is a plain (non-robust) aio-pika connection supervised by
:class:`gateway.link.SupervisedLink` rather than by aio-pika's robust reconnect: a robust connection would
re-declare every per-user exchange it ever saw, including users long gone, and its server-named queue
would come back under a new name without the bindings. After each (re)connect this module re-creates its
channels, queue and consumers, bumps :attr:`generation`, and asks the hub to re-attach the users still
connected here (and only those) and send them ``sync:required``: frames published during the gap are
lost, since live frames are not persisted.

Frames are consumed without acks: the queue is exclusive and frames are best-effort by design (Postgres
is the record; clients catch up with ``notifications.sync``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aio_pika
import aiormq
import structlog

from gateway.errors import TopologyError
from gateway.link import SupervisedLink
from shared.topology import BROADCAST_CRITICAL_HEADER, BROADCAST_TYPE_HEADER

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
    from aiormq.abc import DeliveredMessage

    from gateway.hub import Hub
    from gateway.metrics import Metrics
    from gateway.rpc import RpcClient
    from shared.topology import Topology

log = structlog.get_logger("gateway.broker")

ATTACH_ATTEMPTS: Final = 8
TOPOLOGY_CHANNELS: Final = 4

#: A channel-level failure that closed the topology channel; retrying on a new channel can succeed.
_CHANNEL_FAILURES: Final = (aiormq.exceptions.ChannelClosed, aiormq.exceptions.ChannelInvalidStateError)


@dataclass(eq=False)
class _Lane:
    """One topology channel and the lock that gives it to one operation at a time."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    channel: AbstractChannel | None = None


class BrokerLink(SupervisedLink):
    """See the module docstring. ``run()`` (from :class:`gateway.link.SupervisedLink`) supervises until
    ``close()``."""

    def __init__(
        self, amqp_url: str, names: Topology, rpc: RpcClient, metrics: Metrics, connection_name: str
    ) -> None:
        super().__init__(amqp_url, connection_name)
        self._names = names
        self._rpc = rpc
        self._metrics = metrics
        self._hub: Hub | None = None
        self._lanes = [_Lane() for _ in range(TOPOLOGY_CHANNELS)]
        self._queue_name = ""
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def bind_hub(self, hub: Hub) -> None:
        """The hub frames are relayed to and users are rebuilt from (set once, before :meth:`run`)."""
        self._hub = hub

    async def _open(self, connection: AbstractConnection, lost: asyncio.Event) -> None:
        consume_channel = await connection.channel(publisher_confirms=False)
        rpc_channel = await connection.channel(publisher_confirms=False)
        # Losing either channel while the connection stays up would silently stop the relay or the
        # replies: treat it as losing the link (reconnect, rebuild, sync:required).
        for channel in (consume_channel, rpc_channel):
            self._watch(channel, lost)
        names = self._names
        await consume_channel.declare_exchange(
            names.users_exchange, aio_pika.ExchangeType.DIRECT, durable=True, auto_delete=False
        )
        broadcast = await consume_channel.declare_exchange(
            names.broadcast_exchange, aio_pika.ExchangeType.FANOUT, durable=True, auto_delete=False
        )
        queue: AbstractQueue = await consume_channel.declare_queue("", exclusive=True, durable=False)
        await queue.bind(broadcast)
        # Consumed through aiormq directly: aio-pika would build an IncomingMessage and spawn a second
        # task per frame, and the relay needs neither.
        underlay = await consume_channel.get_underlay_channel()
        await underlay.basic_consume(queue.name, self._on_frame, no_ack=True)
        await self._rpc.attach(rpc_channel)
        self._queue_name = queue.name
        self._generation += 1

    async def _on_up(self) -> None:
        log.info("gateway queue bound", queue=self._queue_name, generation=self._generation)
        if self._hub is not None:
            await self._hub.rebuild()

    def _on_down(self) -> None:
        self._rpc.detach()
        for lane in self._lanes:
            lane.channel = None

    async def _on_lane(
        self, user_id: str, operation: Callable[[AbstractChannel], Awaitable[None]], gone_ok: bool
    ) -> None:
        """Run ``operation`` alone on the user's topology channel, retrying on a fresh channel when the
        broker closed it (404 included). With ``gone_ok`` a 404 means the target is gone: done."""
        lane = self._lanes[hash(user_id) % len(self._lanes)]
        async with lane.lock:
            for attempt in range(ATTACH_ATTEMPTS):
                if self._connection is None or self._connection.is_closed:
                    raise TopologyError("broker connection down")
                if lane.channel is None or lane.channel.is_closed:
                    lane.channel = await self._connection.channel(publisher_confirms=False)
                try:
                    await operation(lane.channel)
                    return
                except aiormq.exceptions.ChannelNotFoundEntity:
                    if gone_ok:
                        return
                    self._metrics.topology_retries.inc()
                except _CHANNEL_FAILURES as exc:
                    self._metrics.topology_retries.inc()
                    log.debug("topology retried", user_id=user_id, attempt=attempt, error=str(exc))
                await asyncio.sleep(0.01 * attempt)
        raise TopologyError(f"topology for {user_id} failed {ATTACH_ATTEMPTS} times")

    async def attach(self, user_id: str) -> None:
        """Declare ``herald.user.<id>``, bind the queue to it, bind it to ``herald.users``; retry on 404.

        Raises:
            TopologyError: the link is down, or every attempt failed.
        """
        exchange_name = self._names.user_exchange(user_id)
        queue_name = self._queue_name

        async def operation(channel: AbstractChannel) -> None:
            # One round trip instead of three: the declare and the first bind are sent with nowait and
            # the last bind waits. AMQP runs a channel's methods in order, so its reply (or the channel
            # closing, 404 included, on any of the three) comes after all of them — and the operation
            # has the channel to itself, so that failure is this attach's.
            underlay = await channel.get_underlay_channel()
            await underlay.exchange_declare(
                exchange_name, exchange_type="fanout", durable=False, auto_delete=True, nowait=True
            )
            # Keyed by the queue name, as aio-pika's ``Queue.unbind`` in detach names it (fanout ignores it).
            await underlay.queue_bind(queue_name, exchange_name, routing_key=queue_name, nowait=True)
            await underlay.exchange_bind(exchange_name, self._names.users_exchange, routing_key=user_id)

        await self._on_lane(user_id, operation, gone_ok=False)

    async def detach(self, user_id: str, generation: int) -> None:
        """Unbind the queue from the user's exchange (which then deletes itself unless another gateway's
        queue is bound). A no-op when that binding died with an earlier connection.

        Raises:
            TopologyError: the link is down, or every attempt failed.
        """
        if generation != self._generation or not self._ready:
            return
        exchange_name = self._names.user_exchange(user_id)
        queue_name = self._queue_name

        async def operation(channel: AbstractChannel) -> None:
            queue = await channel.get_queue(queue_name, ensure=False)
            await queue.unbind(exchange_name)

        await self._on_lane(user_id, operation, gone_ok=True)

    async def _on_frame(self, message: DeliveredMessage) -> None:
        hub = self._hub
        delivery = message.delivery
        if hub is None or not isinstance(delivery, aiormq.spec.Basic.Deliver):
            return
        properties = message.header.properties
        if delivery.exchange == self._names.broadcast_exchange:
            headers = properties.headers or {}
            notification_type = headers.get(BROADCAST_TYPE_HEADER)
            hub.relay_broadcast(
                message.body,
                notification_type if isinstance(notification_type, str) else None,
                bool(headers.get(BROADCAST_CRITICAL_HEADER)),
            )
        else:
            hub.relay_user(delivery.routing_key or "", message.body, properties.message_type)
