"""The ack tracker against RabbitMQ: requeues mixed into a run of acks never close the channel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika

from herald_ops.testing.stack import wait_until
from worker.acks import AckTracker

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustConnection
    from aiormq.abc import DeliveredMessage


async def test_requeues_between_acks_keep_the_channel_open(amqp: AbstractRobustConnection) -> None:
    channel = await amqp.channel()
    queue = await channel.declare_queue("", exclusive=True)
    for i in range(4):
        await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=queue.name)
    raw = await channel.get_underlay_channel()
    deliveries: list[DeliveredMessage] = []

    async def collect(message: DeliveredMessage) -> None:
        deliveries.append(message)

    await raw.basic_qos(prefetch_count=10)
    await raw.basic_consume(queue.name, collect, no_ack=False)
    await wait_until(lambda: len(deliveries) == 4, 10, "four deliveries")

    acks = AckTracker()
    await acks.settle(raw, [2])
    await acks.requeue(raw, [1])  # the run 1..2 ends on an acked tag
    await acks.requeue(raw, [3])  # a run of one nacked tag: no ack may name it
    await acks.settle(raw, [4])
    await wait_until(lambda: len(deliveries) == 6, 10, "the two requeued deliveries to come back")

    assert not raw.is_closed
    assert sorted(d.body for d in deliveries[4:]) == [b"0", b"2"]
    await acks.settle(raw, [5, 6])
    await channel.close()
    check = await amqp.channel()
    declared = await check.declare_queue(queue.name, passive=True)
    assert declared.declaration_result.message_count == 0  # everything acked exactly once
