"""The gateway's AMQP link: connection supervision, its queues, per-user topology, frame intake.

Per process: :data:`GATEWAY_QUEUES` exclusive, server-named queues, all consumed. The first is also bound
to ``herald.broadcast``; each locally connected user's ``herald.user.<id>`` is bound to one of them, always
the same for that user (:meth:`BrokerLink._queue_for`), so a user's frames keep their order.
Attaching a user (PROTOCOL §3): declare ``herald.user.<id>`` (fanout, auto-delete, non-durable), bind the
user's queue to it, then bind it to ``herald.users`` with key ``<id>`` — in that order, so the exchange
always has a queue bound before it can receive anything and deletes itself when the last gateway
unbinds. Detaching = unbinding the user's queue.

Topology runs on its own channels, never the consuming or RPC ones: a small pool of
:data:`TOPOLOGY_CHANNELS`, a user always on the same one, each running one operation (a batch of
attaches, or one detach) at a time. Attaches that arrive while their lane is busy wait for its next batch
(up to :data:`ATTACH_BATCH` users), which is sent in one round trip: a reconnect storm then costs the
broker's work per user, not one round trip per user through a busy event loop. Another gateway's unbind
can delete a user's exchange between this gateway's declare and bind; the broker answers 404 and closes
the channel, so the channel is reopened and the batch retried in halves, down to the single user retried
from the declare. Because an operation has its channel to itself, a 404 (or a channel closing under it)
always belongs to that operation — never to another user's detach queued behind it, which would otherwise
fail and leave a stray binding.

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
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import aio_pika
import aiormq
import structlog

from gateway.errors import TopologyError
from gateway.link import SupervisedLink
from shared.coalesce import Coalescer
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
#: Queues per gateway process its users' bindings are spread over (protocol amendment 40). When the
#: process dies without unbinding, RabbitMQ deletes each exclusive queue with all its bindings, and that
#: costs far more than linearly in the bindings of one queue: 2,000 users on one queue took 27 CPU
#: seconds of the broker to clean up, on 16 queues 1.4 s, on 64 queues 0.8 s (measured, RabbitMQ 3.10).
GATEWAY_QUEUES: Final = 16
TOPOLOGY_CHANNELS: Final = 4
#: Users attached in one round trip on a lane at most: bounds how long the first of them waits for the last.
ATTACH_BATCH: Final = 64

#: A channel-level failure that closed the topology channel; retrying on a new channel can succeed.
_CHANNEL_FAILURES: Final = (aiormq.exceptions.ChannelClosed, aiormq.exceptions.ChannelInvalidStateError)


#: What one user's attach in a batch came to: the generation whose queue it bound (see
#: :meth:`BrokerLink.attach`), or the error that user alone failed with.
_Attached = TopologyError | int

_T = TypeVar("_T")


@dataclass(eq=False)
class _Lane:
    """One topology channel and the lock that gives it to one operation at a time; ``attaches`` batches
    the users that wait for it (set by :class:`BrokerLink`)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    channel: AbstractChannel | None = None
    attaches: Coalescer[str, _Attached] = field(init=False)


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
        for lane in self._lanes:
            lane.attaches = Coalescer(functools.partial(self._attach_users, lane), ATTACH_BATCH)
        self._queue_names: tuple[str, ...] = ()
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
        queues: list[AbstractQueue] = [
            await consume_channel.declare_queue("", exclusive=True, durable=False)
            for _ in range(GATEWAY_QUEUES)
        ]
        await queues[0].bind(broadcast)
        # Consumed through aiormq directly: aio-pika would build an IncomingMessage and spawn a second
        # task per frame, and the relay needs neither.
        underlay = await consume_channel.get_underlay_channel()
        for queue in queues:
            await underlay.basic_consume(queue.name, self._on_frame, no_ack=True)
        await self._rpc.attach(rpc_channel)
        self._queue_names = tuple(queue.name for queue in queues)
        self._generation += 1

    async def _on_up(self) -> None:
        log.info("gateway queues bound", queues=len(self._queue_names), generation=self._generation)
        if self._hub is not None:
            await self._hub.rebuild()

    def _on_down(self) -> None:
        self._rpc.detach()
        for lane in self._lanes:
            lane.channel = None

    def _lane(self, user_id: str) -> _Lane:
        return self._lanes[hash(user_id) % len(self._lanes)]

    def _queue_for(self, user_id: str) -> str:
        """The queue of the current connection that ``user_id``'s exchange is bound to."""
        return self._queue_names[hash(user_id) % len(self._queue_names)]

    async def _on_lane(
        self, user_id: str, operation: Callable[[AbstractChannel], Awaitable[None]], gone_ok: bool
    ) -> None:
        """Run ``operation`` alone on the user's topology channel; see :meth:`_retried`."""
        lane = self._lane(user_id)
        async with lane.lock:
            await self._retried(lane, user_id, operation, gone_ok)

    async def _attempt(self, lane: _Lane, operation: Callable[[AbstractChannel], Awaitable[_T]]) -> _T:
        """Run ``operation`` once on ``lane`` (whose lock the caller holds), on a fresh channel if needed."""
        if self._connection is None or self._connection.is_closed:
            raise TopologyError("broker connection down")
        if lane.channel is None or lane.channel.is_closed:
            lane.channel = await self._connection.channel(publisher_confirms=False)
        return await operation(lane.channel)

    async def _retried(
        self,
        lane: _Lane,
        subject: str,
        operation: Callable[[AbstractChannel], Awaitable[_T]],
        gone_ok: bool,
    ) -> _T | None:
        """Run ``operation`` on ``lane``, retrying on a fresh channel when the broker closed it (404
        included). With ``gone_ok`` a 404 means the target is gone: done (``None``)."""
        for attempt in range(ATTACH_ATTEMPTS):
            try:
                return await self._attempt(lane, operation)
            except aiormq.exceptions.ChannelNotFoundEntity:
                if gone_ok:
                    return None
                self._metrics.topology_retries.inc()
            except _CHANNEL_FAILURES as exc:
                self._metrics.topology_retries.inc()
                log.debug("topology retried", user_id=subject, attempt=attempt, error=str(exc))
            await asyncio.sleep(0.01 * attempt)
        raise TopologyError(f"topology for {subject} failed {ATTACH_ATTEMPTS} times")

    async def attach(self, user_id: str) -> int:
        """Declare ``herald.user.<id>``, bind the queue to it, bind it to ``herald.users``; retry on 404.

        The attach joins its lane's next batch (see the module docstring) and returns when that batch,
        or the part of it that holds this user, is done.

        Returns:
            The :attr:`generation` whose queue the user was bound to. It is newer than the generation
            read before the call when the link reconnected while the attach waited for its lane: the
            binding then lives on the new connection, and only a detach naming that generation removes it.

        Raises:
            TopologyError: the link is down, or every attempt failed.
        """
        outcome = await self._lane(user_id).attaches.get(user_id)
        if isinstance(outcome, TopologyError):
            raise outcome
        return outcome

    async def _attach_users(self, lane: _Lane, users: list[str]) -> dict[str, _Attached]:
        """The batch of ``lane``'s :class:`Coalescer`: the users' outcomes, with the lane to itself."""
        try:
            async with lane.lock:
                return await self._attach_batch(lane, users)
        except TopologyError:
            raise
        except Exception as exc:  # translated, as everything the gateway raises across modules
            raise TopologyError(f"attach failed: {exc!r}") from exc

    async def _attach_batch(self, lane: _Lane, users: list[str]) -> dict[str, _Attached]:
        """Attach ``users`` in one round trip; when that fails, each half on its own, down to single users
        retried as usual. So a race with another gateway's detach costs a retry of its half, and a user
        whose exchange the broker keeps refusing fails alone."""
        operation = self._attach_operation(users)
        try:
            if len(users) == 1:
                bound = await self._retried(lane, users[0], operation, gone_ok=False)
            else:
                bound = await self._attempt(lane, operation)
        except _CHANNEL_FAILURES as exc:
            self._metrics.topology_retries.inc()
            log.debug("batched attach split", users=len(users), error=str(exc))
            half = len(users) // 2
            return await self._attach_batch(lane, users[:half]) | await self._attach_batch(lane, users[half:])
        except TopologyError as exc:
            return dict.fromkeys(users, exc)
        # Not ``gone_ok``: a 404 is retried or raised, never returned as ``None``.
        assert bound is not None
        return dict.fromkeys(users, bound)

    def _attach_operation(self, users: list[str]) -> Callable[[AbstractChannel], Awaitable[int]]:
        names = self._names

        def attach_frames(user_id: str) -> list[aiormq.abc.FrameType]:
            # The queue of the connection this attempt runs on: a retry after a reconnect binds the new one.
            queue_name = self._queue_for(user_id)
            exchange_name = names.user_exchange(user_id)
            return [
                aiormq.spec.Exchange.Declare(
                    exchange=exchange_name, exchange_type="fanout", auto_delete=True, nowait=True
                ),
                # Keyed by the queue name, as aio-pika's ``Queue.unbind`` in detach names it (fanout
                # ignores it).
                aiormq.spec.Queue.Bind(
                    queue=queue_name, exchange=exchange_name, routing_key=queue_name, nowait=True
                ),
                aiormq.spec.Exchange.Bind(
                    destination=exchange_name, source=names.users_exchange, routing_key=user_id, nowait=True
                ),
            ]

        async def operation(channel: AbstractChannel) -> int:
            # The queues named below are those of this generation, read in the same turn as the names.
            generation = self._generation
            # All but the last user's exchange bind, which is sent below and awaited.
            *frames, _ = (frame for user_id in users for frame in attach_frames(user_id))
            # Every method but the last bind goes out as one write: aiormq sends each method through a
            # task and a lock of its own, which costs a few event-loop turns per method, and a reconnect
            # storm makes every turn long (sending 256 users' methods so took 0.2-0.9 s, measured, while
            # the broker answered in 0.05-0.2 s). The last bind is awaited.
            # AMQP runs a channel's methods in order, so its reply (or the channel closing, 404 included,
            # on any of them) comes after all of them; the batch has the channel to itself, and the
            # channel is checked open right before the write, so nothing is sent on a closed channel.
            underlay = await channel.get_underlay_channel()
            if underlay.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("topology channel closed")
            await underlay.connection.write_queue.put(
                aiormq.abc.ChannelFrame.marshall(underlay.number, frames)
            )
            last = users[-1]
            await underlay.exchange_bind(names.user_exchange(last), names.users_exchange, routing_key=last)
            return generation

        return operation

    async def detach(self, user_id: str, generation: int) -> None:
        """Unbind the queue from the user's exchange (which then deletes itself unless another gateway's
        queue is bound). A no-op when that binding died with an earlier connection.

        Raises:
            TopologyError: the link is down, or every attempt failed.
        """
        if generation != self._generation or not self._ready:
            return
        exchange_name = self._names.user_exchange(user_id)
        queue_name = self._queue_for(user_id)

        async def operation(channel: AbstractChannel) -> None:
            queue = await channel.get_queue(queue_name, ensure=False)
            await queue.unbind(exchange_name)

        try:
            await self._on_lane(user_id, operation, gone_ok=True)
        except TopologyError:
            raise
        except Exception as exc:  # the connection failed under the unbind: translated, as attach does
            raise TopologyError(f"detach failed: {exc!r}") from exc

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
