"""What the worker's two aio-pika consumers (``herald.events``, ``herald.rpc``) share.

Each queue is consumed on a channel of its own of the broker's connection, with its own prefetch and no
publisher confirms (nothing is published on it), by a plain callback: aio-pika would wrap a coroutine
function in one more task per delivery. The work a delivery starts runs as tasks the consumer keeps, so
:meth:`QueueConsumer.stop` can finish them. aio-pika's robust channel restores the consumer after a
reconnect; the deliveries a closed channel held are requeued by RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from faststream.rabbit import Channel

from worker.acks import CLOSED_CHANNEL_ERRORS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
    from faststream.rabbit import RabbitBroker


class QueueConsumer:
    """One queue, one channel, a plain delivery callback and the tasks it started."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None

    async def _consume(
        self,
        broker: RabbitBroker,
        prefetch: int,
        declare: Callable[[AbstractRobustChannel], Awaitable[AbstractQueue]],
        on_delivery: Callable[[AbstractIncomingMessage], None],
    ) -> None:
        """Open the channel, ``declare`` the queue on it and start delivering to ``on_delivery``."""
        channel = await broker.config.channel_manager.get_channel(
            Channel(prefetch_count=prefetch, publisher_confirms=False)
        )
        self._queue = await declare(channel)
        # aio-pika accepts a plain callable too (typed as a coroutine function only).
        self._consumer_tag = await self._queue.consume(on_delivery)  # type: ignore[arg-type]

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop taking deliveries and finish the work started for those taken."""
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(*CLOSED_CHANNEL_ERRORS):
                await self._queue.cancel(self._consumer_tag)
        while self._tasks:  # a finishing task may start another (a request's answer, then its ack)
            await asyncio.wait(set(self._tasks))
