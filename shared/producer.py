"""A small producer for Python services: validated events, published with publisher confirms.

Example::

    async with Producer("amqp://guest:guest@127.0.0.1:5672/") as producer:
        await producer.send("u1", "COURSE_NEW_CONTENT", "New lesson", "Lesson 7 is up")

Every event gets an ``event_id`` (a random one unless given) that is also its AMQP ``message_id``, so a
retried ``send`` after a lost confirm stores nothing twice.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Self

import aio_pika
import orjson
from aio_pika.exceptions import DeliveryError
from pydantic import ValidationError

from shared.events import BroadcastEvent, InvalidEvent, SendEvent, validation_reason
from shared.topology import BROADCAST_ROUTING_KEY, SEND_ROUTING_KEY, Topology

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime
    from types import TracebackType

    from aio_pika.abc import AbstractExchange, AbstractRobustConnection


class PublishError(RuntimeError):
    """The broker did not take the event (unroutable: no worker has declared the input queue yet)."""


class Producer:
    """Publishes Herald events to the events exchange and waits for the broker's confirm.

    Args:
        amqp_url: RabbitMQ URL.
        prefix: the topology prefix (``HERALD_AMQP_PREFIX``), ``herald`` by default.
    """

    def __init__(self, amqp_url: str, prefix: str = "herald") -> None:
        self._url = amqp_url
        self._topology = Topology(prefix)
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect_robust(self._url)
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await channel.declare_exchange(
            self._topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def send(
        self,
        user_ids: str | Iterable[str],
        type: str,
        title: str,
        message: str = "",
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
        channels: Iterable[str] | None = None,
        expires_at: datetime | None = None,
    ) -> str:
        """Publish a ``notification.send`` event; return its ``event_id``.

        Raises:
            InvalidEvent: the event breaks a PROTOCOL §4 rule (checked before anything is sent).
            PublishError: the broker returned the message as unroutable.
        """
        recipients = [user_ids] if isinstance(user_ids, str) else list(user_ids)
        body: dict[str, Any] = {"user_ids": recipients}
        body.update(self._common(type, title, message, data, event_id, channels, expires_at))
        _validate(SendEvent, body)
        await self._publish(body, SEND_ROUTING_KEY)
        return str(body["event_id"])

    async def broadcast(
        self,
        type: str,
        title: str,
        message: str = "",
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Publish a ``notification.broadcast`` event for every known user; return its ``event_id``."""
        body = self._common(type, title, message, data, event_id, None, None)
        _validate(BroadcastEvent, body)
        await self._publish(body, BROADCAST_ROUTING_KEY)
        return str(body["event_id"])

    @staticmethod
    def _common(
        type: str,
        title: str,
        message: str,
        data: dict[str, Any] | None,
        event_id: str | None,
        channels: Iterable[str] | None,
        expires_at: datetime | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": event_id or uuid.uuid4().hex,
            "type": type,
            "title": title,
            "message": message,
            "data": data or {},
        }
        if channels is not None:
            body["channels"] = sorted(set(channels))
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        return body

    async def _publish(self, body: dict[str, Any], routing_key: str) -> None:
        if self._exchange is None:
            raise RuntimeError("use `async with Producer(...)` before publishing")
        message = aio_pika.Message(
            orjson.dumps(body),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(body["event_id"]),
        )
        try:
            await self._exchange.publish(message, routing_key=routing_key, mandatory=True)
        except DeliveryError as exc:
            raise PublishError(
                f"{self._topology.events_exchange} returned the event as unroutable: "
                "start a worker once so the input queue exists"
            ) from exc


def _validate(model: type[SendEvent] | type[BroadcastEvent], body: dict[str, Any]) -> None:
    # Same rules the worker applies, so a producer learns of a mistake at once instead of in the DLQ.
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise InvalidEvent(validation_reason(exc)) from None
