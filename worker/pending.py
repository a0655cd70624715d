"""An event the pipeline accepted and has not settled yet, and how its deliveries are acked by channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage
    from aiormq.abc import AbstractChannel

    from shared.events import BroadcastEvent, SendEvent


@dataclass(slots=True)
class Pending:
    """An accepted event waiting for its batch, with what it takes to settle its delivery."""

    event: SendEvent | BroadcastEvent
    message: AbstractIncomingMessage
    channel: AbstractChannel
    tag: int


def tags_by_channel(items: list[Pending]) -> dict[AbstractChannel, list[int]]:
    """The delivery tags of ``items`` grouped by the channel they arrived on (acks are per channel)."""
    tags: dict[AbstractChannel, list[int]] = {}
    for item in items:
        tags.setdefault(item.channel, []).append(item.tag)
    return tags
