"""Pydantic models of what the worker publishes — documentation only (the AsyncAPI document).

The hot path builds these messages as plain dicts and serializes them once with orjson; these models
describe the shapes for the AsyncAPI document (``faststream docs gen --factory worker.app:create_app``
and ``/asyncapi.json``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Action(BaseModel):
    """A button on a notification (§10); the user's choice comes back on ``herald.outcomes``."""

    id: str
    label: str
    url: str | None = None


class Notification(BaseModel):
    """PROTOCOL §5 / §10 Notification object; ``seq`` is null in broadcast frames and for unstored
    (email/push only) notifications. A collapsed notification keeps its ``id`` and gets a new ``seq``,
    ``count`` (how many events it holds) and the latest event's content."""

    id: str
    seq: int | None
    type: str
    category: str
    title: str
    message: str
    data: dict[str, Any]
    url: str | None
    actions: list[Action]
    count: int
    created_at: datetime
    read_at: datetime | None
    seen_at: datetime | None
    archived_at: datetime | None
    acted_at: datetime | None
    action_id: str | None
    expires_at: datetime | None


class NotificationFrame(BaseModel):
    """A JSON-RPC 2.0 notification relayed byte for byte by gateways; the AMQP ``type`` property carries
    ``method``. Requests publish the other methods (``notification:read`` …, ``preferences:updated``)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal[
        "notification:new",
        "notification:read",
        "notification:unread",
        "notification:deleted",
        "notification:seen",
        "notification:archived",
        "notification:unarchived",
        "notification:acted",
        "preferences:updated",
    ]
    params: Notification | dict[str, Any]


class DeliveryJob(BaseModel):
    """One email or push job another service hands ``herald-delivery`` on ``herald.deliveries`` (the
    worker records its own in ``delivery_jobs``, same fields); routing key and ``channel`` agree.

    ``deliver_after`` is the end of the user's quiet hours (hold the job until then) or null (deliver now).
    ``job_key`` (``<id>:<user>:<channel>``) is the same for every version of a collapsed notification and
    ``version`` (its seq) grows with each: a job whose key is still waiting is replaced by a higher
    version, not sent twice. The AMQP ``message_id`` is the job key for version 1 (``count`` 1) and
    ``<job key>:<version>`` for later versions; every version is stable across redeliveries.
    """

    notification: Notification
    user_id: str
    channel: Literal["email", "push"]
    deliver_after: datetime | None = Field(default=None)
    job_key: str
    version: int | None


class Outcome(BaseModel):
    """The action a user chose on a notification (``notifications.act``); routing key = the type.

    The AMQP ``message_id`` is ``<notification id>:<user id>``: a retried call publishes the same
    outcome again, which a consumer drops by that id.
    """

    notification_id: str
    user_id: str
    type: str
    action_id: str
    acted_at: datetime
    data: dict[str, Any]
