"""Publishing from the worker: live frames, broadcast frames, action outcomes, dead letters.

Every publish goes to one of the permanent exchanges declared at start (``herald.users``,
``herald.broadcast``, ``herald.outcomes``, ``herald.dlx``) and never to a per-user exchange: a publish to
an exchange that does not exist closes the channel. Email/push jobs are not published: the pipeline
records them in Postgres in the batch's transaction (``worker.store.deliveries``).

Frames are published with ``mandatory=False`` (a frame for a user connected nowhere is dropped by RabbitMQ
instead of being returned to us). Outcomes, dead letters and broadcast frames use the broker's
publisher-confirm channel and their callers ``await`` the confirm. Live frames — the ``notification:new``
frames of event batches and the events of client requests — go on ``live``: by default a channel without
confirms on the same connection as the consumers, so each frame is written before the batch's ack or the
request's reply (``HERALD_CONFIRM_FRAMES=true`` puts them on the confirm channel; docs/design.md weighs
the two).

Hot-path publishes (live frames) go straight to the underlying aiormq channel with ``wait=False``:
aio-pika's ``Exchange.publish`` holds the channel lock until each frame is flushed to the socket, which
serializes a batch's publishes one socket write at a time; here the confirms are still awaited.

:class:`Publisher` is built once at start-up (:func:`worker.amqp.declare_topology`) and held by the
:class:`worker.runtime.Runtime`; request methods publish with :meth:`Publisher.live_frame`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from aio_pika import DeliveryMode, IncomingMessage, Message
from aiormq import spec

from shared.deadletter import dead_letter_copy
from shared.topology import (
    BROADCAST_CRITICAL_HEADER,
    BROADCAST_TYPE_HEADER,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

    from aio_pika.abc import AbstractExchange
    from aiormq.abc import DeliveredMessage

JSON: Final = "application/json"


class Publisher:
    """The worker's handles on the permanent exchanges (aio-pika exchanges on a confirm channel)."""

    __slots__ = ("broadcast", "dlx", "live", "live_confirmed", "outcomes", "users")

    def __init__(
        self,
        *,
        users: AbstractExchange,
        live: AbstractExchange,
        live_confirmed: bool,
        broadcast: AbstractExchange,
        outcomes: AbstractExchange,
        dlx: AbstractExchange,
    ) -> None:
        self.users = users
        self.live = live
        self.live_confirmed = live_confirmed
        self.broadcast = broadcast
        self.outcomes = outcomes
        self.dlx = dlx

    async def _fast_publish(
        self, exchange: AbstractExchange, routing_key: str, body: bytes, properties: spec.Basic.Properties
    ) -> None:
        # A fresh Properties per message: aiormq writes a message_id into it when it has none.
        channel = await exchange.channel.get_underlay_channel()  # type: ignore[attr-defined]
        await channel.basic_publish(
            body,
            exchange=exchange.name,
            routing_key=routing_key,
            properties=properties,
            mandatory=False,
            wait=False,
        )

    async def live_frame(self, user_id: str, method: str, frame: bytes) -> None:
        """Publish one JSON-RPC frame to ``herald.users`` keyed by ``user_id`` on the ``live`` channel.

        Returns once queued for the socket, unless ``live_confirmed``: then it waits for the confirm. The
        AMQP ``type`` property carries ``method`` so the gateway routes without parsing the body.
        """
        properties = spec.Basic.Properties(content_type=JSON, message_type=method, delivery_mode=1)
        await self._fast_publish(self.live, user_id, frame, properties)

    async def batch_frames(
        self, method: str, frames: Sequence[tuple[str, bytes]], broadcasts: Sequence[tuple[str, bool, bytes]]
    ) -> None:
        """Publish a committed batch's frames: ``(user id, frame)`` live, ``(type, critical, frame)`` to
        ``herald.broadcast``; returns when every confirm there is to wait for arrived."""
        confirmed: list[Coroutine[Any, Any, None]] = []
        try:
            if self.live_confirmed:
                confirmed += [self.live_frame(user, method, frame) for user, frame in frames]
            else:
                # No confirm to wait for: each call only queues the frame for the socket, in order, ahead
                # of the batch's ack, which goes out later on the same connection.
                for user, frame in frames:
                    await self.live_frame(user, method, frame)
            confirmed += [self.broadcast_frame(t, c, method, f) for t, c, f in broadcasts]
            if len(confirmed) == 1:
                await confirmed[0]
            elif confirmed:
                await asyncio.gather(*confirmed)
        except BaseException:
            for coroutine in confirmed:
                coroutine.close()  # those never started: no "never awaited" warning
            raise

    async def broadcast_frame(
        self, notification_type: str, critical: bool, method: str, frame: bytes
    ) -> None:
        """Publish one frame to ``herald.broadcast`` with the type headers; waits for the confirm."""
        await self.broadcast.publish(
            Message(
                frame,
                content_type=JSON,
                type=method,
                headers={BROADCAST_TYPE_HEADER: notification_type, BROADCAST_CRITICAL_HEADER: critical},
            ),
            routing_key="",
            mandatory=False,
        )

    async def outcome(self, notification_type: str, body: bytes, message_id: str) -> None:
        """Publish one persistent action outcome to ``herald.outcomes`` keyed by the notification type;
        waits for the confirm (the producing service acts on it: it must not be lost silently)."""
        await self.outcomes.publish(
            Message(body, content_type=JSON, delivery_mode=DeliveryMode.PERSISTENT, message_id=message_id),
            routing_key=notification_type,
            mandatory=False,
        )

    async def dead_letter(self, delivered: DeliveredMessage, reason: str) -> None:
        """Copy a rejected event to ``herald.dlx`` with its reason; the caller then acks the original.

        The body and properties are kept; headers gain ``x-herald-error`` and the original routing key
        and exchange, which a broker-side reject could not carry, and lose any dead-letter header the
        producer sent, or all of the producer's when they would not fit in one frame with Herald's
        (:func:`shared.deadletter.dead_letter_copy`).
        """
        # Only a rejected event pays for aio-pika's decoded view of its properties.
        message = IncomingMessage(delivered, no_ack=True)
        channel = await self.dlx.channel.get_underlay_channel()  # type: ignore[attr-defined]
        await self.dlx.publish(
            dead_letter_copy(message, reason, channel.connection.connection_tune.frame_max),
            routing_key=message.routing_key or "",
            mandatory=False,
        )
