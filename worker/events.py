"""The ``herald.events`` consumer and the AsyncAPI entries of the worker's input and outputs.

:class:`EventConsumer` hands every delivery to the :class:`worker.pipeline.Pipeline`, which acks (or
dead-letters) it once stored and published. The subscriber and publishers registered for the document are
documentation only: the pipeline publishes through :class:`worker.publish.Publisher`, and AsyncAPI lists
only what a broker knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from faststream import AckPolicy
from faststream.rabbit import Channel
from pydantic import WithJsonSchema

from shared.events import BroadcastEvent, ProfileEvent, SendEvent
from shared.topology import EVENTS_BINDING_KEY, PROFILE_ROUTING_KEY
from worker.amqp import (
    broadcast_exchange,
    events_exchange,
    events_queue,
    outcomes_exchange,
    raw_body,
    users_exchange,
)
from worker.consumers import QueueConsumer
from worker.schemas import NotificationFrame, Outcome

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from aio_pika.abc import AbstractQueue, AbstractRobustChannel
    from aiormq.abc import DeliveredMessage
    from faststream.rabbit import RabbitBroker

    from shared.settings import Settings
    from shared.topology import Topology
    from worker.pipeline import Pipeline


def _inlined(schema: Any, definitions: dict[str, Any] | None = None) -> Any:
    """``schema`` with its local ``$ref``s (``#/$defs/...``) replaced by their definitions: embedded in
    another document, the refs would point at that document's own ``$defs``."""
    if definitions is None and isinstance(schema, dict):
        definitions = schema.get("$defs", {})
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and definitions is not None:
            return _inlined(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {key: _inlined(value, definitions) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inlined(item, definitions) for item in schema]
    return schema


# The handler receives bytes; the schema is the documented event shape (send or broadcast).
EventBody = Annotated[
    bytes,
    WithJsonSchema(
        {
            "oneOf": [
                _inlined(SendEvent.model_json_schema(by_alias=True)),
                _inlined(BroadcastEvent.model_json_schema(by_alias=True)),
                _inlined(ProfileEvent.model_json_schema(by_alias=True)),
            ],
            "description": "A producer event (PROTOCOL §4), or a user.profile event (§9). `user_id` (or "
            "`userId`) may replace `user_ids`; `eventId` and the NestJS envelope `{pattern, data}` are "
            "accepted too.",
        }
    ),
]


def document_events(broker: RabbitBroker, settings: Settings, topology: Topology) -> None:
    """Carry the ``herald.events`` subscriber on ``broker`` for the AsyncAPI document.

    Events are consumed by :class:`EventConsumer`, not by FastStream; ``broker`` is one that never
    connects (see :func:`worker.rpc.document_requests`), so the handler here is never called.
    """

    @broker.subscriber(
        events_queue(topology, settings.delivery_limit),
        events_exchange(topology),
        channel=Channel(prefetch_count=settings.prefetch),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
        decoder=raw_body,
        title="herald.events",
        description="Producer events (routing keys notification.send, notification.broadcast and "
        "user.profile).",
    )
    async def on_event(body: EventBody) -> None:
        """Documentation only: :class:`EventConsumer` hands each delivery to the pipeline, which acks (or
        dead-letters) it once stored and published."""
        raise RuntimeError("the documentation broker never consumes")


class EventConsumer(QueueConsumer):
    """The ``herald.events`` consumer: its own channel with ``settings.prefetch`` (:mod:`worker.consumers`).

    FastStream's per-message machinery (parser, middlewares, fast-depends, a task per message) cost as
    much of the worker's CPU as a bare FastStream loop does in all (docs/performance.md), so deliveries go
    from aiormq straight to :meth:`worker.pipeline.Pipeline.accept`: a valid event is queued for a batch
    in the callback itself, and only what needs I/O first (a dead-lettering, a profile, an unknown type)
    runs as a task. The queue (quorum, ``x-delivery-limit``, dead-lettering to
    ``herald.dlx``) and its two bindings are declared with the flags every declarer uses.
    """

    def __init__(self, settings: Settings, topology: Topology, pipeline: Callable[[], Pipeline]) -> None:
        super().__init__()
        self._settings = settings
        self._topology = topology
        self._pipeline = pipeline

    async def start(self, broker: RabbitBroker) -> None:
        """Declare and bind ``herald.events`` on a channel of ``broker``'s connection and start consuming."""
        await self._consume(broker, self._settings.prefetch, self._declare, self._on_event)

    async def _declare(self, channel: AbstractRobustChannel) -> AbstractQueue:
        topology = self._topology
        queue = await channel.declare_queue(
            topology.events_queue,
            durable=True,
            arguments=topology.events_queue_arguments(self._settings.delivery_limit),
        )
        for routing_key in (EVENTS_BINDING_KEY, PROFILE_ROUTING_KEY):
            await queue.bind(topology.events_exchange, routing_key=routing_key)
        return queue

    def _on_event(self, message: DeliveredMessage) -> Coroutine[Any, Any, None] | None:
        return self._pipeline().accept(message)


def document_publishers(broker: RabbitBroker, topology: Topology) -> None:
    """List the worker's outputs in the AsyncAPI document (nothing publishes through these objects)."""
    broker.publisher(
        exchange=users_exchange(topology),
        title="herald.users",
        schema=NotificationFrame,
        description="Live JSON-RPC frames, routing key = user id, AMQP type = method.",
    )
    broker.publisher(
        exchange=broadcast_exchange(topology),
        title="herald.broadcast",
        schema=NotificationFrame,
        description="Broadcast notification:new frames: seq null, header x-herald-type = the type.",
    )
    broker.publisher(
        exchange=outcomes_exchange(topology),
        title="herald.outcomes",
        schema=Outcome,
        description="The actions users chose (notifications.act), routing key = the notification type.",
    )
