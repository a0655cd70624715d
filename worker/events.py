"""The ``herald.events`` subscriber and the AsyncAPI entries of what the worker publishes.

The handler receives the raw body and hands the delivery to the :class:`worker.pipeline.Pipeline`, which
acks (or dead-letters) it once stored and published. The publishers registered here are documentation
only: the pipeline publishes through :class:`worker.publish.Publisher`, and AsyncAPI lists only
publishers the broker knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from faststream import AckPolicy
from faststream.rabbit import Channel
from pydantic import WithJsonSchema

from shared.events import BroadcastEvent, ProfileEvent, SendEvent
from worker.amqp import (
    broadcast_exchange,
    events_exchange,
    events_queue,
    outcomes_exchange,
    raw_body,
    users_exchange,
)
from worker.schemas import NotificationFrame, Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from faststream.rabbit import RabbitBroker
    from faststream.rabbit.message import RabbitMessage
    from faststream.rabbit.subscriber import RabbitSubscriber

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


def subscribe_events(
    broker: RabbitBroker, settings: Settings, topology: Topology, pipeline: Callable[[], Pipeline]
) -> RabbitSubscriber:
    """Register the ``herald.events`` consumer; ``pipeline`` returns the running worker's pipeline."""
    subscriber = broker.subscriber(
        events_queue(topology, settings.delivery_limit),
        events_exchange(topology),
        channel=Channel(prefetch_count=settings.prefetch),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
        decoder=raw_body,
        title="herald.events",
        description="Producer events (routing keys notification.send, notification.broadcast and, bound "
        "after start, user.profile).",
    )

    @subscriber
    async def on_event(body: EventBody) -> None:
        """Hand one delivery to the pipeline; it acks (or dead-letters) it once stored and published."""
        # From the context, not a `msg: RabbitMessage` parameter: parameters cost a thread-pool hop each.
        message: RabbitMessage = broker.context.get_local("message")
        await pipeline().accept(message.raw_message)

    return subscriber


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
