"""What the worker's two queue consumers (``herald.events``, ``herald.rpc``) share.

Each queue is consumed on a channel of its own of the broker's connection, with its own prefetch and no
publisher confirms (nothing is published on it), through aiormq directly, as the gateway consumes its
frames. aio-pika's ``Queue.consume`` would turn every delivery into an ``IncomingMessage`` (every property
decoded and copied) and run the callback in a second task per delivery, through a wrapper that warns on
each call of a plain function: about 15 % of the worker's CPU per event (docs/performance.md). Here aiormq's
own task per delivery calls the consumer's callback, which either finishes the delivery's work at once or
returns a coroutine that runs as a task the consumer keeps, so :meth:`QueueConsumer.stop` can finish it.

aio-pika's robust channel still owns the channel: after a reconnect it reopens it, restores its prefetch,
queue and bindings, and then calls :meth:`QueueConsumer._resume`, which consumes again (aio-pika restores
only the consumers it created itself). The deliveries a closed channel held are requeued by RabbitMQ. When
the broker cancels the consumer (the queue was deleted), the queue is declared again, with its bindings,
and consumed again: an operator's delete must not leave a running worker idle while its queue fills.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from faststream.rabbit import Channel

from worker.acks import CLOSED_CHANNEL_ERRORS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from aio_pika.abc import AbstractQueue, AbstractRobustChannel
    from aiormq import spec
    from aiormq.abc import DeliveredMessage
    from faststream.rabbit import RabbitBroker

    #: Called in aiormq's task for each delivery: ``None`` when done, else the rest of the work.
    OnDelivery = Callable[[DeliveredMessage], Coroutine[Any, Any, None] | None]

log = structlog.get_logger(__name__)


class QueueConsumer:
    """One queue, one channel, a plain delivery callback and the tasks it started."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._channel: AbstractRobustChannel | None = None
        self._queue_name = ""
        self._declare_queue: Callable[[AbstractRobustChannel], Awaitable[AbstractQueue]] | None = None
        self._on_delivery: OnDelivery | None = None
        self._consumer_tag: str | None = None
        self._stopping = False

    async def _consume(
        self,
        broker: RabbitBroker,
        prefetch: int,
        declare: Callable[[AbstractRobustChannel], Awaitable[AbstractQueue]],
        on_delivery: OnDelivery,
    ) -> None:
        """Open the channel, ``declare`` the queue on it and start delivering to ``on_delivery``."""
        channel = await broker.config.channel_manager.get_channel(
            Channel(prefetch_count=prefetch, publisher_confirms=False)
        )
        queue = await declare(channel)
        self._channel, self._queue_name = channel, queue.name
        self._declare_queue, self._on_delivery = declare, on_delivery
        channel.reopen_callbacks.add(self._resume)
        await self._basic_consume(channel)

    async def _basic_consume(self, channel: AbstractRobustChannel) -> None:
        if self._stopping:  # a reconnect or a re-declare finishing during stop(): stay stopped
            return
        underlay = await channel.get_underlay_channel()
        consuming = await underlay.basic_consume(self._queue_name, self._deliver, no_ack=False)
        self._consumer_tag = consuming.consumer_tag
        underlay.on_consumer_cancel_callbacks.add(self._cancelled_by_broker)

    def _cancelled_by_broker(self, frame: spec.Basic.Cancel) -> None:
        if frame.consumer_tag != self._consumer_tag or self._channel is None or self._stopping:
            return
        self._consumer_tag = None
        log.warning("the broker cancelled the consumer; declaring the queue again", queue=self._queue_name)
        self._spawn(self._consume_again(self._channel, declare=True))

    async def _resume(self, channel: AbstractRobustChannel | None) -> None:
        """Consume again on the channel aio-pika reopened after a reconnect (queue and bindings restored)."""
        if channel is not None:  # aio-pika passes the channel through a weak reference
            await self._consume_again(channel, declare=False)

    async def _consume_again(self, channel: AbstractRobustChannel, *, declare: bool) -> None:
        """Consume on ``channel`` again, declaring the queue (and its bindings) first if ``declare``."""
        assert self._declare_queue is not None  # set before the first basic_consume
        try:
            if declare:
                await self._declare_queue(channel)
            await self._basic_consume(channel)
        except Exception:
            # The channel closed meanwhile: aio-pika reopens it and calls _resume again.
            log.warning("consuming again failed", queue=self._queue_name, exc_info=True)
            return
        log.info("consuming again", queue=self._queue_name)

    async def _deliver(self, message: DeliveredMessage) -> None:
        assert self._on_delivery is not None  # set before basic_consume
        work = self._on_delivery(message)
        if work is not None:
            self._spawn(work)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop taking deliveries and finish the work started for those taken."""
        self._stopping = True  # from here on nothing consumes again (_basic_consume checks it)
        channel, tag = self._channel, self._consumer_tag
        if channel is not None and tag is not None:
            with contextlib.suppress(*CLOSED_CHANNEL_ERRORS):
                underlay = await channel.get_underlay_channel()
                await underlay.basic_cancel(tag)
        while self._tasks:  # a finishing task may start another (a request's answer, then its ack)
            await asyncio.wait(set(self._tasks))
