"""An event the pipeline accepted and has not settled yet: how sends are cut into batches, and how their
deliveries are acked by channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shared.events import SendEvent

if TYPE_CHECKING:
    from aiormq.abc import AbstractChannel, DeliveredMessage

    from shared.events import BroadcastEvent


@dataclass(slots=True)
class Pending:
    """An accepted event waiting for its batch, with what it takes to settle its delivery."""

    event: SendEvent | BroadcastEvent
    message: DeliveredMessage
    channel: AbstractChannel
    tag: int


# A batch of fan-out events (up to 1,000 recipients each) is cut short at this many recipients.
_MAX_ROWS_PER_BATCH: Final = 5000


def take_batch(pending: list[Pending], size: int) -> list[Pending]:
    """Remove and return the first ``size`` events of ``pending``, fewer when their recipients would exceed
    a transaction's worth."""
    count = rows = 0
    for item in pending[:size]:
        weight = len(item.event.user_ids) if isinstance(item.event, SendEvent) else 1
        if count and rows + weight > _MAX_ROWS_PER_BATCH:
            break
        count += 1
        rows += weight
    batch = pending[:count]
    del pending[:count]
    return batch


def tags_by_channel(items: list[Pending]) -> dict[AbstractChannel, list[int]]:
    """The delivery tags of ``items`` grouped by the channel they arrived on (acks are per channel)."""
    tags: dict[AbstractChannel, list[int]] = {}
    for item in items:
        tags.setdefault(item.channel, []).append(item.tag)
    return tags
