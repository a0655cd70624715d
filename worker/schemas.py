"""Pydantic models of what the worker publishes — documentation only (the AsyncAPI document).

The hot path builds these messages as plain dicts and serializes them once with orjson; these models
describe the shapes for the AsyncAPI document (``faststream docs gen --factory worker.app:create_app``
and ``/asyncapi.json``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Notification(BaseModel):
    """PROTOCOL §5 Notification object; ``seq`` is null in broadcast frames and for unstored (email/push
    only) notifications."""

    id: str
    seq: int | None
    type: str
    category: str
    title: str
    message: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


class NotificationFrame(BaseModel):
    """A JSON-RPC 2.0 notification relayed byte for byte by gateways; the AMQP ``type`` property carries
    ``method``. Requests publish the other methods (``notification:read`` …, ``preferences:updated``)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal[
        "notification:new",
        "notification:read",
        "notification:unread",
        "notification:deleted",
        "preferences:updated",
    ]
    params: Notification | dict[str, Any]


class DeliveryJob(BaseModel):
    """One email or push job; routing key and ``channel`` agree.

    ``deliver_after`` is the end of the user's quiet hours (hold the job until then) or null (deliver now).
    The AMQP ``message_id`` is ``<id>:<user>:<channel>``, stable across redeliveries.
    """

    notification: Notification
    user_id: str
    channel: Literal["email", "push"]
    deliver_after: datetime | None = Field(default=None)
