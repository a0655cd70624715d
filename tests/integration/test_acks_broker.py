"""The ack tracker against RabbitMQ: requeues mixed into a run of acks, and deliveries acked one by one
around a held one (a broadcast in progress), never close the channel and leave nothing unacked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika

from herald_ops.testing.stack import wait_until
from worker.acks import AckTracker

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
    from aiormq.abc import AbstractChannel as RawChannel
    from aiormq.abc import DeliveredMessage


async def consuming(
    channel: AbstractChannel, count: int
) -> tuple[AbstractQueue, RawChannel, list[DeliveredMessage]]:
    """A fresh queue with ``count`` messages, consumed with manual acks; the deliveries as they come."""
    queue = await channel.declare_queue("", exclusive=True)
    for i in range(count):
        await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=queue.name)
    raw = await channel.get_underlay_channel()
    deliveries: list[DeliveredMessage] = []

    async def collect(message: DeliveredMessage) -> None:
        deliveries.append(message)

    await raw.basic_qos(prefetch_count=10)
    await raw.basic_consume(queue.name, collect, no_ack=False)
    await wait_until(lambda: len(deliveries) == count, 10, f"{count} deliveries")
    return queue, raw, deliveries


async def assert_all_acked(amqp: AbstractRobustConnection, channel: AbstractChannel, queue: str) -> None:
    """Close ``channel`` (unacked deliveries would go back to the queue) and check the queue is empty."""
    await channel.close()
    check = await amqp.channel()
    declared = await check.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count == 0  # everything acked exactly once


async def test_requeues_between_acks_keep_the_channel_open(amqp: AbstractRobustConnection) -> None:
    channel = await amqp.channel()
    queue, raw, deliveries = await consuming(channel, 4)

    acks = AckTracker()
    await acks.settle(raw, [2])
    await acks.requeue(raw, [1])  # the run 1..2 ends on an acked tag
    await acks.requeue(raw, [3])  # a run of one nacked tag: no ack may name it
    await acks.settle(raw, [4])
    await wait_until(lambda: len(deliveries) == 6, 10, "the two requeued deliveries to come back")

    assert not raw.is_closed
    assert sorted(d.body for d in deliveries[4:]) == [b"0", b"2"]
    await acks.settle(raw, [5, 6])
    await assert_all_acked(amqp, channel, queue.name)


async def test_deliveries_around_a_held_one_are_acked_without_it(amqp: AbstractRobustConnection) -> None:
    channel = await amqp.channel()
    queue, raw, deliveries = await consuming(channel, 5)

    acks = AckTracker()
    acks.hold(raw, 2)
    await acks.settle(raw, [1, 3])  # 1 by a multiple-ack, 3 alone
    await acks.requeue(raw, [4])
    await wait_until(lambda: len(deliveries) == 6, 10, "the requeued delivery to come back")
    await acks.settle(raw, [5, 6])  # alone too: 2 is still held
    await acks.settle(raw, [2])  # the held one last: a multiple-ack naming it, the rest already gone

    assert not raw.is_closed
    await assert_all_acked(amqp, channel, queue.name)
