"""Admin-only methods: ``notifications.broadcast``."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
from pydantic import ConfigDict, StringConstraints

from shared.events import TYPE_PATTERN, BroadcastEvent
from shared.topology import BROADCAST_ROUTING_KEY
from worker.requests.common import Method, bad_param

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime

DEFAULT_TYPE: Final = "SYSTEM_ANNOUNCEMENT"


class BroadcastParams(BroadcastEvent):
    """``notifications.broadcast``: a broadcast event's body; ``type`` defaults to the announcement."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Annotated[str, StringConstraints(pattern=TYPE_PATTERN)] = DEFAULT_TYPE


async def broadcast(runtime: Runtime, caller: Caller, params: BroadcastParams) -> dict[str, Any]:
    """``notifications.broadcast`` (admin): publish a broadcast event to ``herald.events``.

    The worker that consumes it stores it for every known user whose preferences allow the type and
    publishes the live frame; the reply only says the event was accepted by the broker (confirmed).
    """
    if params.type not in runtime.catalog:
        raise bad_param("type", "unknown notification type")
    event_id = params.event_id or f"broadcast-{uuid.uuid4().hex}"
    body = orjson.dumps({**params.model_dump(mode="json", exclude_none=True), "event_id": event_id})
    await runtime.broker.publish(
        body,
        exchange=runtime.topology.events_exchange,
        routing_key=BROADCAST_ROUTING_KEY,
        persist=True,
        content_type="application/json",
        message_id=event_id,
    )
    return {"accepted": True, "event_id": event_id}


METHODS: Final = {"notifications.broadcast": Method(BroadcastParams, broadcast, admin_only=True)}
