"""The worker's side of the docs/protocol.md §3 topology, declared idempotently at every start.

Flags are explicit everywhere (FastStream and aio-pika defaults differ, and a redeclaration with other flags
fails with PRECONDITION_FAILED): every exchange durable and not auto-delete; ``herald.events`` a quorum
queue dead-lettering to ``herald.dlx`` with ``x-delivery-limit``; ``herald.events.dead`` and ``herald.rpc``
durable classic queues.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

import aio_pika
from faststream.rabbit import Channel, ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue

from shared.topology import EVENTS_BINDING_KEY
from worker import frames
from worker.publish import Publisher

if TYPE_CHECKING:
    from faststream.rabbit.message import RabbitMessage
    from faststream.rabbit.schemas.queue import QuorumQueueArgs

    from shared.topology import Topology


#: Seconds between aio-pika's reconnect attempts after the broker connection is lost. Its default, 5 s,
#: kept the worker away for up to 5 s after a broker restart, while the gateways were back within 1 s
#: and their clients' catch-up syncs waited on the worker's ``herald.rpc`` consumer. An attempt while the
#: broker is down is one refused TCP connect.
RECONNECT_INTERVAL: Final = 0.5


def broker(amqp_url: str) -> RabbitBroker:
    """The FastStream broker of a worker or delivery process: Herald's own logging, a prompt reconnect,
    and content headers read so that a producer's undecodable properties cannot close the connection
    (:mod:`worker.frames`)."""
    frames.install()
    return RabbitBroker(amqp_url, logger=None, reconnect_interval=RECONNECT_INTERVAL)


def _exchange(name: str, kind: ExchangeType) -> RabbitExchange:
    return RabbitExchange(name, type=kind, durable=True, auto_delete=False)


def users_exchange(topology: Topology) -> RabbitExchange:
    """``herald.users``: direct exchange for live frames, routing key = user id."""
    return _exchange(topology.users_exchange, ExchangeType.DIRECT)


def broadcast_exchange(topology: Topology) -> RabbitExchange:
    """``herald.broadcast``: fanout exchange for frames addressed to everyone."""
    return _exchange(topology.broadcast_exchange, ExchangeType.FANOUT)


def deliveries_exchange(topology: Topology) -> RabbitExchange:
    """``herald.deliveries``: topic exchange for email/push jobs from other services, routing key =
    channel (the worker records its own jobs in Postgres)."""
    return _exchange(topology.deliveries_exchange, ExchangeType.TOPIC)


def outcomes_exchange(topology: Topology) -> RabbitExchange:
    """``herald.outcomes``: topic exchange for the actions users took, routing key = notification type."""
    return _exchange(topology.outcomes_exchange, ExchangeType.TOPIC)


def events_exchange(topology: Topology) -> RabbitExchange:
    """``herald.events``: the topic exchange producers publish to."""
    return _exchange(topology.events_exchange, ExchangeType.TOPIC)


def events_queue(topology: Topology, delivery_limit: int) -> RabbitQueue:
    """``herald.events``: the worker's quorum input queue, bound ``notification.#``."""
    return RabbitQueue(
        topology.events_queue,
        QueueType.QUORUM,
        durable=True,
        arguments=cast("QuorumQueueArgs", topology.events_queue_arguments(delivery_limit)),
        routing_key=EVENTS_BINDING_KEY,
    )


async def declare_topology(broker: RabbitBroker, topology: Topology, *, confirm_frames: bool) -> Publisher:
    """Declare every entity of §3 the worker owns and return a :class:`Publisher` on the permanent exchanges.

    Unless ``confirm_frames``, live event frames get a channel of their own without publisher confirms
    (see ``worker.publish``).

    The two consumed queues, ``herald.events`` (with its bindings) and ``herald.rpc``, are declared by
    their consumers (:class:`worker.events.EventConsumer`, :class:`worker.rpc.RpcConsumer`) on their own
    channels, with their ``prefetch_count``.
    """
    await broker.declare_exchange(events_exchange(topology))
    dlx = await broker.declare_exchange(_exchange(topology.dead_letter_exchange, ExchangeType.FANOUT))
    dead = await broker.declare_queue(RabbitQueue(topology.dead_letter_queue, durable=True))
    await dead.bind(dlx, routing_key="")
    users = await broker.declare_exchange(users_exchange(topology))
    live = users
    if not confirm_frames:
        # Straight from the channel: FastStream's declarer caches exchanges by their flags alone and
        # would hand back the confirm channel's object.
        channel = await broker.config.channel_manager.get_channel(Channel(publisher_confirms=False))
        live = await channel.declare_exchange(
            topology.users_exchange, aio_pika.ExchangeType.DIRECT, durable=True, auto_delete=False
        )
    # The worker records its email/push jobs in Postgres; the exchange stays for other services' jobs
    # (herald-delivery consumes it; its broker user may not declare it).
    await broker.declare_exchange(deliveries_exchange(topology))
    return Publisher(
        users=users,
        live=live,
        live_confirmed=confirm_frames,
        broadcast=await broker.declare_exchange(broadcast_exchange(topology)),
        outcomes=await broker.declare_exchange(outcomes_exchange(topology)),
        dlx=dlx,
    )


async def raw_body(message: RabbitMessage) -> bytes:
    """A subscriber decoder that hands the body over untouched: handlers parse it themselves, whatever the
    content type says, and document its shape with a ``WithJsonSchema`` annotation instead."""
    return message.body
